// Opens the live results page in Debian's Chromium (phone-sized), casts
// ballots through the API, and waits for the page's bars to show them.
// Usage: node live_page.mjs PAGE_URL API_URL ELECTION_ID RUNNER SCREENSHOT TOKEN...
import { chromium } from "playwright-core";

const [, , pageUrl, apiUrl, electionId, runner, screenshot, ...tokens] = process.argv;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(pageUrl);
  await page.waitForSelector('#connection[data-state="live"]', { timeout: 15000 });
  const votes = `.runner[data-runner="${runner}"] .votes`;
  await page.waitForSelector(votes, { timeout: 15000 });
  const before = await page.textContent(votes);

  for (const token of tokens) {
    const response = await fetch(`${apiUrl}/v1/elections/${electionId}/ballots`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ selections: [Number(runner)] }),
    });
    if (response.status !== 202) throw new Error(`ballot refused: ${response.status} ${await response.text()}`);
  }
  const expected = `${tokens.length} (100.0%)`;
  await page.waitForFunction(
    ([selector, text]) => document.querySelector(selector)?.textContent === text,
    [votes, expected],
    { timeout: 20000 },
  );
  const width = await page.$eval(`.runner[data-runner="${runner}"] .bar > span`, (bar) => bar.style.width);
  const names = await page.$$eval(".runner .name", (nodes) => nodes.map((n) => n.textContent));
  const injected = await page.$$eval(".runner img, .runner script", (nodes) => nodes.length);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ before, after: await page.textContent(votes), width, names, injected, errors }));
} finally {
  await browser.close();
}
