// Opens a final election's live page in Debian's Chromium and checks its
// "Verify this election" section: the checkpoint, the files, and a
// receipt checked in the browser. The page fetches the record from its own
// origin (one origin behind nginx); here the API listens elsewhere, so
// those requests are answered from the API.
// Usage: node record_page.mjs PAGE_URL API_URL RECEIPT SCREENSHOT
import { chromium } from "playwright-core";

const [, , pageUrl, apiUrl, receipt, screenshot] = process.argv;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const origin = new URL(pageUrl).origin;
  await page.route(/\/v1\/(elections\/[0-9]+\/record\/|record\/|receipts\/)/, async (route) => {
    const response = await route.fetch({ url: route.request().url().replace(origin, apiUrl) });
    await route.fulfill({ response });
  });
  await page.goto(pageUrl);
  await page.waitForSelector("#record:not([hidden])", { timeout: 30000 });
  const checkResult = async (value) => {
    await page.fill("#record-receipt", value);
    await page.evaluate(() => { document.getElementById("record-result").dataset.status = ""; });
    await page.click("#record-check");
    await page.waitForFunction(() => document.getElementById("record-result").dataset.status, null, { timeout: 15000 });
    return page.$eval("#record-result", (n) => ({ status: n.dataset.status, text: n.textContent }));
  };
  const mine = await checkResult(receipt);
  await page.screenshot({ path: screenshot, fullPage: true });
  const stranger = await checkResult("00000000-0000-4000-8000-000000000000");
  console.log(JSON.stringify({
    checkpoint: await page.textContent("#record-checkpoint"),
    signature: await page.textContent("#record-signature"),
    files: await page.$$eval("#record-files a", (links) => links.map((a) => a.textContent)),
    caveat: await page.textContent("#record .caveat"),
    mine,
    stranger,
    errors,
  }));
} finally {
  await browser.close();
}
