// Goes through the voter page in Debian's Chromium (phone-sized): sign up
// with an enrollment code, log out and back in, read the eligibility of
// each open election, cast a ballot, and follow its receipt until it is
// recorded (other voters' ballots, cast here through the API, push it out
// of the group the workers hold).
// Usage: node vote_page.mjs PAGE_URL CITIZEN CODE PHONE ELECTION RUNNER SCREENSHOT TOKEN...
import { chromium } from "playwright-core";

const [, , pageUrl, citizen, code, phone, election, runner, screenshot, ...tokens] = process.argv;
const password = "a long enough demo password";
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // Every answer the page got should be a success (the browser's own
  // favicon request aside): a refused call shows here with its URL.
  page.on("response", (r) => {
    // The record check asks for a proof the open election cannot have yet.
    const expected = r.url().endsWith("/favicon.ico") || (r.status() === 409 && r.url().endsWith("/proof"));
    if (r.status() >= 400 && !expected) errors.push(`${r.status()} ${r.url()}`);
  });
  // The browser also logs each failed load, without its address; the
  // response handler above judges those by address.
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of 40[49]/.test(m.text()) && !m.text().includes("404")) errors.push(m.text());
  });
  await page.goto(pageUrl);

  await page.fill("#signup [name=citizen_id]", citizen);
  await page.fill("#signup [name=enrollment_code]", code);
  await page.fill("#signup [name=phone]", phone);
  await page.fill("#signup [name=password]", password);
  await page.click("#signup button[type=submit]");
  await page.waitForSelector(`.election[data-election="${election}"] .ballot`, { timeout: 15000 });
  const signedInAs = await page.textContent("#citizen");

  await page.click("#logout");
  await page.waitForSelector("#login", { state: "visible" });
  await page.fill("#login [name=citizen_id]", citizen);
  await page.fill("#login [name=password]", password);
  await page.click("#login button[type=submit]");
  const card = `.election[data-election="${election}"]`;
  await page.waitForSelector(`${card} .ballot`, { timeout: 15000 });

  const verdicts = await page.$$eval(".election", (cards) =>
    Object.fromEntries(cards.map((c) => [c.dataset.election, c.querySelector(".eligibility").textContent])));
  const names = await page.$$eval(`${card} .runner .name`, (nodes) => nodes.map((n) => n.textContent));
  const injected = await page.$$eval(".election img, .election script", (nodes) => nodes.length);
  const liveLink = await page.$eval(`${card} a`, (a) => a.href);

  await page.check(`${card} input[value="${runner}"]`);
  await page.click(`${card} .cast`);
  await page.waitForSelector("#receipt", { state: "visible", timeout: 15000 });
  const receipt = await page.textContent("#receipt-id");
  await page.waitForFunction(() => document.getElementById("receipt-status").textContent !== "", null,
    { timeout: 10000 });
  const first = await page.textContent("#receipt-status");

  for (const token of tokens) {
    const response = await fetch(new URL(`/v1/elections/${election}/ballots`, pageUrl), {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ selections: [Number(runner)] }),
    });
    if (response.status !== 202) throw new Error(`ballot refused: ${response.status} ${await response.text()}`);
  }
  await page.waitForFunction(() => document.getElementById("receipt-status").textContent === "recorded", null,
    { timeout: 30000 });
  // The election is still open, so its record does not exist yet.
  await page.click("#receipt-checks button");
  await page.waitForFunction(() => document.getElementById("record-answer").dataset.status !== undefined, null,
    { timeout: 10000 });
  const record = await page.$eval("#record-answer", (s) => s.dataset.status);
  await page.screenshot({ path: screenshot, fullPage: true });
  const receiptLink = await page.$eval("#live-link", (a) => a.href);
  console.log(JSON.stringify({ signedInAs, verdicts, names, injected, liveLink, receipt, first,
    last: await page.textContent("#receipt-status"), receiptLink, record, errors }));
} finally {
  await browser.close();
}
