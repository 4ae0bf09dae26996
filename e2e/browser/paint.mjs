// Times the console's first useful paint in headless Chromium, for the bench's `console`
// phase: each load is a new browser context (an empty cache, as a first visit), signed in
// already (the key put in session storage before the page runs), opening the overview of a
// site over 30 days. Prints {"loads": [{site, figures_ms, complete_ms, first_contentful_paint_ms}]}:
// the ms after the navigation began at which the top figures showed, and at which every
// panel had loaded.
//
// Environment: TALLY_CONSOLE_URL, TALLY_CONSOLE_KEY, TALLY_CONSOLE_SITES (comma-separated),
// TALLY_PAINT_LOADS (default 10), TALLY_CHROMIUM; NODE_PATH=$TALLY_PLAYWRIGHT_NODE_PATH.
import { loadPlaywright } from "./playwright.mjs";

const base = (process.env.TALLY_CONSOLE_URL || "").replace(/\/+$/, "");
const key = process.env.TALLY_CONSOLE_KEY || "";
const sites = (process.env.TALLY_CONSOLE_SITES || "").split(",").filter(Boolean);
const loads = Number(process.env.TALLY_PAINT_LOADS || 10);
if (!base || !key || !sites.length || !process.env.TALLY_CHROMIUM) {
  process.stderr.write("set TALLY_CONSOLE_URL, TALLY_CONSOLE_KEY, TALLY_CONSOLE_SITES and TALLY_CHROMIUM\n");
  process.exit(2);
}
const watchdog = setTimeout(() => {
  process.stderr.write("paint.mjs: over 300 s\n");
  process.exit(1);
}, 300_000);

const pw = loadPlaywright();
const browser = await pw.chromium.launch({ executablePath: process.env.TALLY_CHROMIUM, args: ["--no-sandbox", "--disable-gpu"] });
const results = [];
try {
  for (let i = 0; i < loads + 1; i++) {
    const site = sites[i % sites.length];
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await context.addInitScript((k) => sessionStorage.setItem("tally.key", k), key);
    const page = await context.newPage();
    await page.goto(`${base}/console/?site=${encodeURIComponent(site)}&period=30d`);
    await page.waitForSelector("#main .figures .figure[data-metric] .value", { timeout: 30_000 });
    const figures_ms = await page.evaluate(() => performance.now());
    await page.waitForSelector("svg.chart", { timeout: 30_000 });
    await page.waitForFunction(() => !document.querySelector("#main [aria-busy]"), null, { timeout: 60_000 });
    const complete_ms = await page.evaluate(() => performance.now());
    const first_contentful_paint_ms = await page.evaluate(() => (performance.getEntriesByName("first-contentful-paint")[0] || {}).startTime ?? null);
    await context.close();
    // The first load warms the query service and ClickHouse's caches: not counted.
    if (i > 0) results.push({ site, figures_ms, complete_ms, first_contentful_paint_ms });
  }
} finally {
  await browser.close();
  clearTimeout(watchdog);
}
process.stdout.write(JSON.stringify({ loads: results }) + "\n");
