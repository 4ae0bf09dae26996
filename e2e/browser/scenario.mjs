// Drives headless Chromium through the demo website (examples/demo-site) and reports what the
// Tally tracker sent. See README.md beside this file.
//
//   NODE_PATH=$TALLY_PLAYWRIGHT_NODE_PATH node e2e/browser/scenario.mjs <scenario>
//
// Environment: TALLY_DEMO_URL (base URL of the demo site), TALLY_CHROMIUM (the browser),
// TALLY_SCREENSHOT_DIR (optional: one PNG per step), TALLY_USER_AGENT (optional: the
// browser's user agent; headless Chromium's own says "HeadlessChrome", which the collector
// takes for a bot). Prints one JSON object on stdout:
//   {"scenario", "sent": [event bodies POSTed to /v1/events, in order], "page_errors",
//    "console_errors", "tracker_bytes"}
// and exits non-zero with a message on stderr when a step fails. Progress goes to stderr.
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadPlaywright } from "./playwright.mjs";

const SCENARIOS = { tour, dnt, optout, blocked, unreachable };
const RUN_TIMEOUT_MS = 55_000;
const STEP_TIMEOUT_MS = 10_000;
// Visible time a page gets before it is left, so that its time_on_page is > 0.
const DWELL_MS = 1_000;
// Between two clicks: keeps their events in order and lets the tracker's requests start.
const PAUSE_MS = 150;
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const name = process.argv[2];
const demoUrl = (process.env.TALLY_DEMO_URL || "").replace(/\/+$/, "");
const chromiumPath = process.env.TALLY_CHROMIUM || "";
const screenshotDir = process.env.TALLY_SCREENSHOT_DIR || "";
const userAgent = process.env.TALLY_USER_AGENT || "";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const log = (...words) => process.stderr.write(`[scenario ${name}] ${words.join(" ")}\n`);

// Everything the run started, undone however it ends.
let chromium = null; // the browser's process
let profileDir = "";
let browser = null;
function cleanup() {
  // The browser runs in a process group of its own: this ends its helpers too.
  if (chromium && chromium.pid) {
    try {
      process.kill(-chromium.pid, "SIGKILL");
    } catch {}
  }
  chromium = null;
  if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
  profileDir = "";
}

function fail(message) {
  process.stderr.write(`scenario ${name || "(none)"} failed: ${message}\n`);
  cleanup();
  process.exit(1);
}

// playwright-core from NODE_PATH, or the run fails saying why.
function playwright() {
  try {
    return loadPlaywright();
  } catch (e) {
    fail(e.message);
  }
}

// step NAME FN — runs one step within STEP_TIMEOUT_MS, then saves a screenshot of `shot`.
let stepNumber = 0;
let shot = null;
async function step(title, fn) {
  stepNumber += 1;
  log(`step ${stepNumber}: ${title}`);
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
  });
  try {
    await Promise.race([fn(), timeout]);
  } catch (e) {
    fail(`step ${stepNumber} (${title}): ${e && e.message ? e.message : e}`);
  } finally {
    clearTimeout(timer);
  }
  if (screenshotDir && shot && !shot.isClosed()) {
    const file = path.join(screenshotDir, `${name}-${String(stepNumber).padStart(2, "0")}-${title.replace(/[^a-z0-9]+/gi, "-").replace(/^-|-$/g, "").toLowerCase()}.png`);
    await Promise.race([shot.screenshot({ path: file }).catch(() => {}), sleep(3_000)]);
  }
}

// The collector's origin, from the tracker's tag of the demo's home page.
async function collectorOrigin() {
  const res = await fetch(`${demoUrl}/index.html`, { signal: AbortSignal.timeout(5_000) });
  if (!res.ok) throw new Error(`GET ${demoUrl}/index.html answered ${res.status}`);
  const html = await res.text();
  const src = /<script[^>]*\ssrc="([^"]*\/tracker\.js)"/.exec(html);
  if (!src) throw new Error("the demo's index.html has no tracker.js script tag");
  return new URL(src[1], `${demoUrl}/`).origin;
}

const isLoopback = (host) => host === "127.0.0.1" || host === "localhost" || host === "[::1]";

// Starts the browser and connects to it. Not chromium.launch(): Playwright's own pages are
// always "visible" (it keeps every page focused), so visibilitychange never fires in them.
// Attached over CDP with noDefaults, the pages of the browser's default context are plain
// tabs: bringing another tab to the front hides them, as for a visitor.
async function startBrowser(pw) {
  profileDir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-browser-"));
  const args = [
    ...ARGS,
    "--headless",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    `--user-data-dir=${profileDir}`,
    "--window-size=1280,800",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--password-store=basic",
    "--use-mock-keychain",
    ...(userAgent ? [`--user-agent=${userAgent}`] : []),
    "about:blank",
  ];
  let stderr = "";
  // TMPDIR: its singleton socket's directory goes into the profile too, removed with it.
  chromium = spawn(chromiumPath, args, {
    stdio: ["ignore", "ignore", "pipe"],
    detached: true,
    env: { ...process.env, TMPDIR: profileDir },
  });
  chromium.stderr.on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  chromium.on("error", (e) => fail(`${chromiumPath} does not start: ${e.message}`));
  const portFile = path.join(profileDir, "DevToolsActivePort");
  const deadline = Date.now() + 15_000;
  let port = "";
  while (!port) {
    if (chromium.exitCode !== null) throw new Error(`${chromiumPath} exited (${chromium.exitCode}): ${stderr}`);
    if (Date.now() > deadline) throw new Error(`${chromiumPath} opened no DevTools port in 15 s: ${stderr}`);
    try {
      port = fs.readFileSync(portFile, "utf8").split("\n")[0].trim();
    } catch {}
    if (!port) await sleep(50);
  }
  browser = await pw.chromium.connectOverCDP(`http://127.0.0.1:${port}`, { noDefaults: true, timeout: 15_000 });
  return browser;
}

async function closeBrowser() {
  if (browser) {
    try {
      const session = await browser.newBrowserCDPSession();
      await Promise.race([session.send("Browser.close"), sleep(3_000)]);
    } catch {}
    await Promise.race([browser.close().catch(() => {}), sleep(3_000)]);
  }
  if (chromium && chromium.exitCode === null && chromium.signalCode === null) {
    await Promise.race([new Promise((resolve) => chromium.once("exit", resolve)), sleep(3_000)]);
  }
  cleanup();
}

// The run: one browser, its default context, and what was seen in it.
const report = { scenario: name, sent: [], page_errors: [], console_errors: [], tracker_bytes: 0 };
let collector = "";
let context = null;

function watch(page) {
  page.on("pageerror", (e) => report.page_errors.push(String(e && e.message ? e.message : e)));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const text = m.text();
    // Network failures: the requests this run aborts on purpose (other hosts, a blocked
    // collector). An error status of a server that answered is kept.
    if (/net::ERR_/.test(text)) return;
    report.console_errors.push(text);
  });
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
}

// Every request of the browser passes here (CDP Fetch on the browser's own session, not
// page.route or page.on("request"): those only see requests while their page lives, and
// miss the events that pagehide sends as a page is left or closed). Requests to hosts other
// than this machine's loopback are aborted, and so are those to `blocked` ("host:port") and,
// with blockEvents, the events. Each POST to the collector's /v1/events is recorded in order.
async function interceptRequests({ blocked = "", blockEvents = false }) {
  const session = await browser.newBrowserCDPSession();
  session.on("Fetch.requestPaused", (paused) => {
    const { requestId, request } = paused;
    let url;
    try {
      url = new URL(request.url);
    } catch {
      url = null;
    }
    const toEvents = url && url.origin === collector && url.pathname === "/v1/events";
    if (toEvents && request.method === "POST") report.sent.push(eventOf(request));
    // "Aborted" (net::ERR_ABORTED): a link to another host then stays on its page instead of
    // showing an error page, and the click neither hangs nor leaves the machine.
    const abort = !url || !isLoopback(url.hostname) || url.host === blocked || (blockEvents && toEvents);
    const answer = abort
      ? session.send("Fetch.failRequest", { requestId, errorReason: "Aborted" })
      : session.send("Fetch.continueRequest", { requestId });
    answer.catch(() => {}); // the request may be gone already
  });
  await session.send("Fetch.enable", { patterns: [{ urlPattern: "*", requestStage: "Request" }] });
}

function eventOf(request) {
  let body = request.postData;
  if (body === undefined && request.postDataEntries) {
    body = request.postDataEntries.map((entry) => Buffer.from(entry.bytes || "", "base64").toString("utf8")).join("");
  }
  try {
    return JSON.parse(body);
  } catch {
    return { unparsable_body: String(body) };
  }
}

async function setUp(pw, interception = {}) {
  await startBrowser(pw);
  context = browser.contexts()[0];
  if (!context) throw new Error("the browser has no default context");
  await interceptRequests(interception);
  // Downloads are not kept: the click is what counts.
  const session = await browser.newBrowserCDPSession();
  await session.send("Browser.setDownloadBehavior", { behavior: "deny" });
  context.on("response", async (response) => {
    const url = new URL(response.url());
    if (url.origin !== collector || url.pathname !== "/tracker.js" || report.tracker_bytes) return;
    try {
      report.tracker_bytes = (await response.body()).length;
    } catch {}
  });
  const page = await context.newPage();
  watch(page);
  shot = page;
  return page;
}

async function open(page, file) {
  const response = await page.goto(`${demoUrl}/${file}`, { waitUntil: "load" });
  if (!response || !response.ok()) throw new Error(`${file} answered ${response ? response.status() : "nothing"}`);
}

async function click(page, selector) {
  await page.click(selector);
  await sleep(PAUSE_MS);
}

// Clicks a same-site link and waits for the next page to load.
async function follow(page, selector, file) {
  await Promise.all([page.waitForURL(`**/${file}`, { waitUntil: "load" }), page.click(selector)]);
  await sleep(PAUSE_MS);
}

async function text(page, selector) {
  return (await page.textContent(selector)).trim();
}

async function expectText(page, selector, wanted) {
  await page.waitForFunction(
    ([sel, want]) => document.querySelector(sel) && document.querySelector(sel).textContent.includes(want),
    [selector, wanted],
    { timeout: 3_000 },
  ).catch(async () => {
    throw new Error(`${selector} says ${JSON.stringify(await text(page, selector))}, not ${JSON.stringify(wanted)}`);
  });
}

// Brings a new tab to the front, which hides `page` (visibilitychange -> hidden).
async function hide(page) {
  const other = await context.newPage();
  await other.bringToFront();
  await page.waitForFunction(() => document.visibilityState === "hidden", null, { timeout: 3_000 }).catch(() => {
    throw new Error("the page did not become hidden when another tab came to the front");
  });
  await sleep(PAUSE_MS);
  return other;
}

// After the page was visible a while, opens another view of the app (pushState).
async function switchView(page, selector, title) {
  await sleep(DWELL_MS);
  await click(page, selector);
  await expectText(page, "#view-title", title);
}

// After the page was visible a while, hides it (another tab in front), then closes it.
async function hideThenClose(page, what) {
  await step(what, async () => {
    await sleep(DWELL_MS);
    shot = await hide(page);
  });
  await step("close the page", () => closePage(page));
}

async function closePage(page) {
  await page.close({ runBeforeUnload: true });
  // The events of pagehide leave after the page is gone.
  await sleep(500);
}

// The demo's elements, every click a tracked one, then the pages and the SPA.
async function tour(pw) {
  const page = await setUp(pw);
  await step("open index.html", async () => {
    await open(page, "index.html");
    await sleep(PAUSE_MS);
  });
  await step("click #signup", () => click(page, "#signup"));
  await step("click #add-to-cart", () => click(page, "#add-to-cart"));
  await step("click the newsletter button", () => click(page, "[data-tally-event=newsletter_signup]"));
  await step("click the video button", async () => {
    await click(page, "#play-video");
    await expectText(page, "#video-status", "Playing");
  });
  await step("click the download link", () => click(page, "#download"));
  await step("click the outbound link (aborted)", async () => {
    await click(page, "#outbound");
    await sleep(300);
    if (!page.url().endsWith("/index.html")) throw new Error(`the outbound link left the page for ${page.url()}`);
  });
  await step("follow the nav link to pricing.html", async () => {
    await sleep(DWELL_MS);
    await follow(page, "#nav-pricing", "pricing.html");
  });
  await step("follow the nav link to app.html", async () => {
    await sleep(DWELL_MS);
    await follow(page, "#nav-app", "app.html");
    await expectText(page, "#view-title", "Overview");
  });
  await step("open the reports view (pushState)", async () => {
    await switchView(page, "#view-reports", "Reports");
  });
  await step("open the settings view (pushState)", async () => {
    await switchView(page, "#view-settings", "Settings");
  });
  await step("go back (popstate)", async () => {
    await sleep(DWELL_MS);
    await page.goBack();
    await expectText(page, "#view-title", "Reports");
    if (!page.url().endsWith("/app.html?view=reports")) throw new Error(`back went to ${page.url()}`);
    await sleep(PAUSE_MS);
  });
  await hideThenClose(page, "hide the page (another tab in front)");
}

// Do-Not-Track on, and the demo's tag has data-respect-dnt: nothing may be sent.
async function dnt(pw) {
  const page = await setUp(pw);
  await context.setExtraHTTPHeaders({ DNT: "1" });
  await context.addInitScript(() => {
    Object.defineProperty(Navigator.prototype, "doNotTrack", { get: () => "1", configurable: true });
  });
  await step("open index.html", async () => {
    await open(page, "index.html");
    if ((await page.evaluate(() => navigator.doNotTrack)) !== "1") throw new Error("navigator.doNotTrack is not 1");
    if (!(await page.evaluate(() => typeof window.tally.track === "function"))) throw new Error("the tracker did not load");
  });
  await step("click #signup and the video button", async () => {
    await click(page, "#signup");
    await click(page, "#play-video");
  });
  await step("follow the nav link to app.html", async () => {
    await sleep(DWELL_MS);
    await follow(page, "#nav-app", "app.html");
  });
  await step("open the reports view (pushState)", async () => {
    await switchView(page, "#view-reports", "Reports");
  });
  await hideThenClose(page, "hide the page");
}

// Opting out stops everything after the opt-out click, across a reload.
async function optout(pw) {
  const page = await setUp(pw);
  await step("open index.html", async () => {
    await open(page, "index.html");
    await sleep(PAUSE_MS);
  });
  await step("click the opt-out button", async () => {
    await sleep(DWELL_MS / 2);
    await click(page, "#opt-out");
    await expectText(page, "#opt-out", "Opt in");
    if ((await page.evaluate(() => localStorage.getItem("tally_ignore"))) !== "true") throw new Error("tally_ignore is not set");
  });
  await step("reload", async () => {
    await sleep(DWELL_MS);
    await page.reload({ waitUntil: "load" });
    await expectText(page, "#opt-out", "Opt in");
  });
  await step("click #signup and the video button", async () => {
    await click(page, "#signup");
    await click(page, "#play-video");
  });
  await step("open app.html and a view", async () => {
    await sleep(DWELL_MS);
    await follow(page, "#nav-app", "app.html");
    await click(page, "#view-reports");
    await expectText(page, "#view-title", "Reports");
  });
  await hideThenClose(page, "hide the page");
}

// Works without the tracker: `blocked` aborts every request to the collector (tracker.js too),
// `unreachable` loads the tracker but aborts its events.
async function withoutCollector(pw, options) {
  const host = new URL(collector).host;
  const page = await setUp(pw, options.events ? { blockEvents: true } : { blocked: host });
  await step("open index.html", () => open(page, "index.html"));
  await step("click the buttons", async () => {
    await click(page, "#signup");
    await expectText(page, "#cart-status", "Welcome");
    await click(page, "#add-to-cart");
    await expectText(page, "#cart-status", "Pro is in your cart");
    await click(page, "[data-tally-event=newsletter_signup]");
    await expectText(page, "#newsletter-status", "subscribed");
    await click(page, "#play-video");
    await expectText(page, "#video-status", "Playing");
    await click(page, "#opt-out");
    await expectText(page, "#opt-out", "Opt in");
    await click(page, "#opt-out");
    await expectText(page, "#opt-out", "Opt out");
  });
  await step("follow the nav link to app.html", async () => {
    await sleep(DWELL_MS);
    await follow(page, "#nav-app", "app.html");
    await expectText(page, "#view-title", "Overview");
  });
  await step("switch views (pushState, popstate)", async () => {
    await switchView(page, "#view-reports", "Reports");
    await click(page, "#view-settings");
    await expectText(page, "#view-title", "Settings");
    await click(page, "#back");
    await expectText(page, "#view-title", "Reports");
  });
  await step("close the page", () => closePage(page));
}

function blocked(pw) {
  return withoutCollector(pw, { events: false });
}

function unreachable(pw) {
  return withoutCollector(pw, { events: true });
}

async function main() {
  if (!SCENARIOS[name]) fail(`usage: scenario.mjs <${Object.keys(SCENARIOS).join("|")}>`);
  if (!demoUrl) fail("TALLY_DEMO_URL is not set");
  if (!chromiumPath) fail("TALLY_CHROMIUM is not set");
  if (screenshotDir) fs.mkdirSync(screenshotDir, { recursive: true });
  const watchdog = setTimeout(() => fail(`the run took over ${RUN_TIMEOUT_MS / 1000} s`), RUN_TIMEOUT_MS);
  const pw = playwright();
  try {
    collector = await collectorOrigin();
  } catch (e) {
    fail(`cannot find the collector: ${e.message}`);
  }
  log(`demo ${demoUrl}, collector ${collector}`);
  try {
    await SCENARIOS[name](pw);
  } catch (e) {
    fail(e && e.stack ? e.stack : String(e));
  }
  await closeBrowser();
  clearTimeout(watchdog);
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

process.on("SIGINT", () => fail("interrupted"));
process.on("SIGTERM", () => fail("terminated"));
main().then(
  () => process.exit(0),
  (e) => fail(e && e.stack ? e.stack : String(e)),
);
