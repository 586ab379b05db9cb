// Opens the interactive API documentation in Debian's Chromium and reports
// what it rendered. Usage: node docs_page.mjs DOCS_URL SCREENSHOT
import { chromium } from "playwright-core";

const [, , docsUrl, screenshot] = process.argv;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(docsUrl);
  await page.waitForSelector(".swagger-ui .opblock", { timeout: 20000 });
  const title = await page.textContent(".swagger-ui .info .title");
  const operations = await page.$$eval(".swagger-ui .opblock-summary-path", (nodes) => nodes.map((n) => n.textContent));
  await page.screenshot({ path: screenshot });
  console.log(JSON.stringify({ title, operations }));
} finally {
  await browser.close();
}
