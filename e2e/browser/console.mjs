// Drives headless Chromium through the console (query/console/, served by tally-query at
// /console/) and reports what each page shows, as JSON on stdout. See README.md here.
//
//   NODE_PATH=$TALLY_PLAYWRIGHT_NODE_PATH node e2e/browser/console.mjs
//
// Environment: TALLY_CONSOLE_URL (the query service's base URL), TALLY_CONSOLE_KEY (an
// admin key), TALLY_CONSOLE_SITE (the site to pick), TALLY_CONSOLE_PAGE (the page of the
// top-pages panel to click), TALLY_CONSOLE_SEARCH (a text to search the sessions for),
// TALLY_CHROMIUM (the browser), TALLY_AXE (axe-core's axe.min.js), TALLY_SCREENSHOT_DIR
// (optional: a PNG of every page, desktop and phone).
import fs from "node:fs";
import path from "node:path";
import { loadPlaywright } from "./playwright.mjs";

const RUN_TIMEOUT_MS = 240_000;
const STEP_TIMEOUT_MS = 20_000;
const env = (name) => {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
};
const log = (...words) => process.stderr.write(`[console] ${words.join(" ")}\n`);
let browser = null;

function fail(message) {
  process.stderr.write(`console run failed: ${message}\n`);
  if (browser) browser.close().catch(() => {});
  process.exit(1);
}

const base = env("TALLY_CONSOLE_URL").replace(/\/+$/, "");
const adminKey = env("TALLY_CONSOLE_KEY");
const site = env("TALLY_CONSOLE_SITE");
const clickPage = env("TALLY_CONSOLE_PAGE");
const search = env("TALLY_CONSOLE_SEARCH");
const axeSource = fs.readFileSync(env("TALLY_AXE"), "utf8");
const screenshotDir = process.env.TALLY_SCREENSHOT_DIR || "";

const report = { axe: [], screenshots: [], page_errors: [], console_errors: [] };
// Errors the run provokes on purpose (a wrong key, an unreachable API) are not reported.
let expectingErrors = false;

async function step(title, fn) {
  log(title);
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
  });
  try {
    return await Promise.race([fn(), timeout]);
  } catch (e) {
    fail(`${title}: ${e && e.stack ? e.stack : e}`);
  } finally {
    clearTimeout(timer);
  }
}

function watch(page) {
  page.on("pageerror", (e) => report.page_errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error" && !expectingErrors) report.console_errors.push(m.text());
  });
}

// Waits until the view has loaded: nothing in it is busy, and `selector` is there.
async function ready(page, selector) {
  await page.waitForSelector(selector, { state: "attached" });
  await page.waitForFunction(() => !document.querySelector("#main [aria-busy]") && !document.querySelector("#main .loading"));
}

const OVERVIEW = "#main .figures .figure[data-metric] >> nth=5";

async function axe(page, name) {
  await page.evaluate(`${axeSource}\n;0`);
  const result = await page.evaluate(() =>
    window.axe.run(document, { resultTypes: ["violations"] }).then((r) =>
      r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5) })),
    ),
  );
  report.axe.push({ page: name, violations: result });
}

async function shoot(page, name) {
  if (!screenshotDir) return;
  const file = path.join(screenshotDir, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  report.screenshots.push(file);
}

// What a panel's table shows: each row's cells by column key, as the API gave them.
function rows(page, scope) {
  return page.$$eval(`${scope} .data-table tbody tr`, (trs) =>
    trs
      .filter((tr) => !tr.querySelector("td.empty"))
      .map((tr) => Object.fromEntries([...tr.querySelectorAll("td")].map((td) => [td.dataset.key, td.dataset.value]))),
  );
}

async function figures(page) {
  return page.$$eval("#main .figures .figure[data-metric], #main .kv .figure[data-metric]", (els) =>
    Object.fromEntries(
      els.map((el) => [
        el.dataset.metric,
        { value: el.dataset.value, text: el.querySelector(".value").textContent, change: el.querySelector(".change") ? el.querySelector(".change").textContent : null },
      ]),
    ),
  );
}

async function overview(page) {
  const panels = {};
  for (const id of ["pages", "sources", "devices", "events", "goals", "live"]) panels[id] = await rows(page, `#panel-${id}`);
  return {
    url: page.url(),
    figures: await figures(page),
    realtime: await page.$eval("#realtime .value", (el) => el.dataset.value),
    graph: await page.$$eval("svg.chart", (svgs) => ({
      charts: svgs.length,
      points: svgs[0] ? svgs[0].querySelectorAll("circle.point").length : 0,
      previous: svgs[0] ? !!svgs[0].querySelector('[data-series="previous"]') : false,
      title: document.getElementById("graph-title") ? document.getElementById("graph-title").textContent : "",
    })),
    chips: await page.$$eval(".filters .chip", (els) => els.map((el) => ({ dimension: el.dataset.dimension, value: el.dataset.value }))),
    panels,
  };
}

async function nav(page, view, selector) {
  await page.click(`nav.views a[href*="view=${view}"]`);
  await ready(page, selector);
}

async function signIn(page, key) {
  await page.waitForSelector("#key");
  await page.fill("#key", key);
  await page.click("form button[type=submit]");
}

async function main() {
  const watchdog = setTimeout(() => fail(`the run took over ${RUN_TIMEOUT_MS / 1000} s`), RUN_TIMEOUT_MS);
  let pw;
  try {
    pw = loadPlaywright();
  } catch (e) {
    fail(e.message);
  }
  if (screenshotDir) fs.mkdirSync(screenshotDir, { recursive: true });
  browser = await pw.chromium.launch({
    executablePath: env("TALLY_CHROMIUM"),
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"],
  });
  const desktop = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await desktop.newPage();
  watch(page);

  await step("the sign-in page", async () => {
    const answer = await page.goto(`${base}/`);
    report.landing = { url: page.url(), status: answer.status(), csp: (await answer.allHeaders())["content-security-policy"] || "" };
    await page.waitForSelector("#key");
    await axe(page, "signin");
    await shoot(page, "signin-desktop");
  });
  await step("a wrong key is refused", async () => {
    expectingErrors = true;
    await signIn(page, "not-a-key-of-this-pipeline");
    await page.waitForFunction(() => document.getElementById("signin-error").textContent.length > 0);
    report.wrong_key = await page.$eval("#signin-error", (el) => el.textContent);
    expectingErrors = false;
  });
  await step("signing in, the site and the range", async () => {
    await signIn(page, adminKey);
    await ready(page, OVERVIEW);
    report.key_in_url = page.url().includes(adminKey);
    report.key_in_session_storage = await page.evaluate((k) => sessionStorage.getItem("tally.key") === k, adminKey);
    await page.selectOption("#site", site);
    await ready(page, OVERVIEW);
    await page.selectOption("#period", "30d");
    await page.waitForURL(/period=30d/);
    await ready(page, OVERVIEW);
    await page.waitForSelector("svg.chart");
    await ready(page, OVERVIEW);
  });
  await step("the overview", async () => {
    report.overview = await overview(page);
    await axe(page, "overview");
    await shoot(page, "overview-desktop");
  });
  await step("the first useful paint, signed in", async () => {
    await page.reload();
    await page.waitForSelector("#main .figures .figure[data-metric] .value");
    report.paint = await page.evaluate(() => ({
      figures_ms: performance.now(),
      first_contentful_paint_ms: (performance.getEntriesByName("first-contentful-paint")[0] || {}).startTime ?? null,
    }));
    await ready(page, OVERVIEW);
    await page.waitForSelector("svg.chart");
  });
  await step("the keyboard reaches the pickers and the figures", async () => {
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    const reached = [];
    for (let i = 0; i < 25; i++) {
      await page.keyboard.press("Tab");
      const id = await page.evaluate(() => {
        const el = document.activeElement;
        return el.id || (el.classList.contains("figure") ? `figure:${el.dataset.metric}` : el.textContent.trim().slice(0, 30));
      });
      reached.push(id);
    }
    report.keyboard = reached;
    // Enter on the focused figure picks the graph's metric.
    await page.focus('.figure[data-metric="pageviews"]');
    await page.keyboard.press("Enter");
    await page.waitForURL(/metric=pageviews/);
    await ready(page, OVERVIEW);
    await page.waitForSelector("svg.chart");
    report.graph_metric = await page.$eval("#graph-title", (el) => el.textContent);
  });
  await step("sorting a table and exporting it", async () => {
    await page.click('#panel-pages th button:has-text("Pageviews")');
    await page.waitForFunction(() => !document.querySelector("#panel-pages [aria-busy]"));
    report.sorted_pages = await rows(page, "#panel-pages");
    report.sorted_header = await page.$eval('#panel-pages th[aria-sort="descending"]', (el) => el.textContent);
    const download = page.waitForEvent("download");
    await page.click('#panel-pages button[aria-label^="Export"]');
    const file = await (await download).path();
    report.pages_csv = fs.readFileSync(file, "utf8");
  });
  await step("a click on a page filters every panel", async () => {
    await page.click(`#panel-pages button.link:text-is("${clickPage}")`);
    await page.waitForURL(/f\.event%3Apage=/);
    await ready(page, ".filters .chip");
    await ready(page, OVERVIEW);
    await page.waitForSelector("svg.chart");
    report.filtered = await overview(page);
    await shoot(page, "overview-filtered-desktop");
  });
  await step("the filtered link reproduces the view", async () => {
    const again = await desktop.newPage();
    watch(again);
    await again.goto(report.filtered.url);
    await signIn(again, adminKey);
    await ready(again, ".filters .chip");
    await ready(again, OVERVIEW);
    report.link = { url: again.url(), figures: await figures(again) };
    await again.close();
  });
  await step("dark mode is remembered", async () => {
    await page.click("#theme");
    report.theme = { toggled: await page.evaluate(() => document.documentElement.dataset.theme) };
    await page.reload();
    await ready(page, OVERVIEW);
    report.theme.after_reload = await page.evaluate(() => document.documentElement.dataset.theme);
    await page.waitForSelector("svg.chart");
    await axe(page, "overview-dark");
    await shoot(page, "overview-dark-desktop");
    await page.click("#theme");
  });
  await step("the experiments", async () => {
    await nav(page, "experiments", "#experiment .data-table tbody tr");
    report.experiments = {
      list: await rows(page, "#main > section.card:first-of-type"),
      figures: await figures(page),
      variants: await rows(page, "#experiment"),
      sample_ratio: await page.$eval("#sample-ratio", (el) => el.textContent),
    };
    await axe(page, "experiments");
    await shoot(page, "experiments-desktop");
  });
  await step("the sessions and a search in them", async () => {
    await nav(page, "sessions", "#main .data-table tbody tr");
    const all = await rows(page, "#main");
    await axe(page, "sessions");
    await shoot(page, "sessions-desktop");
    await page.fill("#session-search", search);
    await page.press("#session-search", "Enter");
    await page.waitForURL(/q=/);
    await ready(page, "#main .data-table tbody tr");
    const found = await rows(page, "#main");
    await page.click("#main .data-table tbody tr:first-child button.link");
    await page.waitForURL(/session=/);
    await ready(page, "#main .data-table tbody tr");
    report.sessions = { all, found, opened: new URL(page.url()).searchParams.get("session"), events: await rows(page, "#main") };
    await axe(page, "session");
    await shoot(page, "session-desktop");
  });
  await step("the pipeline's health", async () => {
    await nav(page, "health", "#health .figure[data-metric]");
    report.health = { figures: await figures(page), dead_letters: await rows(page, "#main") };
    await axe(page, "health");
    await shoot(page, "health-desktop");
  });
  await step("an expired key and an unreachable API end in toasts, not a blank page", async () => {
    expectingErrors = true;
    await page.route("**/v1/**", (route) => route.abort());
    await nav(page, "overview", "#main");
    await page.waitForSelector(".toast");
    report.unreachable = await page.$$eval(".toast p", (els) => els.map((el) => el.textContent));
    await page.unroute("**/v1/**");
    await page.evaluate(() => sessionStorage.setItem("tally.key", "a-key-that-was-rotated-away"));
    await page.reload();
    await page.waitForSelector("#key");
    report.expired = { signin: true, message: await page.$eval("#signin-error", (el) => el.textContent) };
    expectingErrors = false;
  });

  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const small = await phone.newPage();
  watch(small);
  await step("on a phone", async () => {
    await small.goto(`${base}/console/?site=${encodeURIComponent(site)}&period=30d`);
    await shoot(small, "signin-phone");
    await signIn(small, adminKey);
    await ready(small, OVERVIEW);
    await small.waitForSelector("svg.chart");
    await ready(small, OVERVIEW);
    report.phone = { overflow: {} };
    const overflow = () => small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    report.phone.overflow.overview = await overflow();
    await axe(small, "overview-phone");
    await shoot(small, "overview-phone");
    for (const [view, selector] of [
      ["experiments", "#experiment .data-table tbody tr"],
      ["sessions", "#main .data-table tbody tr"],
      ["health", "#health .figure[data-metric]"],
    ]) {
      await nav(small, view, selector);
      report.phone.overflow[view] = await overflow();
      await axe(small, `${view}-phone`);
      await shoot(small, `${view}-phone`);
    }
  });
  await browser.close();
  clearTimeout(watchdog);
  process.stdout.write(JSON.stringify(report) + "\n");
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
