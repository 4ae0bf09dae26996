// The console's entry: signing in, the state of the view (all of it in the URL, so a link
// reproduces what is shown), the header with its pickers, and the four views.
import { h, fill, toast, select } from "./ui.js";
import { call, query, key, ApiError } from "./api.js";
import { overview } from "./overview.js";
import { experiments } from "./experiments.js";
import { sessions } from "./sessions.js";
import { health } from "./health.js";

const VIEWS = [
  ["overview", "Overview", overview],
  ["experiments", "Experiments", experiments],
  ["sessions", "Sessions", sessions],
  ["health", "Pipeline", health],
];
const PERIODS = [
  ["day", "Today"],
  ["7d", "Last 7 days"],
  ["30d", "Last 30 days"],
  ["month", "This month"],
  ["year", "This year"],
  ["custom", "Custom range"],
];
const root = document.getElementById("app");
let account = null; // the answer of /v1/sites
let timers = [];

// The view's state, read from the URL: ?site=&period=&from=&to=&view=&f.<dimension>=<value>…
function readState() {
  const p = new URLSearchParams(location.search);
  const filters = [];
  for (const [name, value] of p) if (name.startsWith("f.")) filters.push([name.slice(2), value]);
  return {
    site: p.get("site") || "",
    period: p.get("period") || "7d",
    from: p.get("from") || "",
    to: p.get("to") || "",
    view: p.get("view") || "overview",
    metric: p.get("metric") || "visitors",
    exp: p.get("exp") || "",
    session: p.get("session") || "",
    q: p.get("q") || "",
    event: p.get("event") || "",
    prop: p.get("prop") || "",
    filters,
  };
}

function writeUrl(state, push) {
  const p = new URLSearchParams();
  const defaults = { period: "7d", view: "overview", metric: "visitors" };
  for (const name of ["site", "view", "period", "from", "to", "metric", "exp", "session", "q", "event", "prop"]) {
    const value = state[name];
    if (!value || value === defaults[name]) continue;
    if ((name === "from" || name === "to") && state.period !== "custom") continue;
    p.set(name, value);
  }
  for (const [dimension, value] of state.filters) p.append(`f.${dimension}`, value);
  const url = `${location.pathname}${p.size ? `?${p}` : ""}`;
  if (url !== `${location.pathname}${location.search}`) history[push ? "pushState" : "replaceState"](null, "", url);
}

let state = readState();

// Changes the state, records it in the URL (a new history entry when `push`) and shows it.
function navigate(changes, { push = true } = {}) {
  state = { ...state, ...changes };
  writeUrl(state, push);
  render();
}

function stopTimers() {
  for (const t of timers) clearInterval(t);
  timers = [];
}

// Every error of the API ends here: a toast, and for a key no longer accepted, sign-in.
function fail(error) {
  if (error instanceof ApiError && error.status === 401) {
    key.clear();
    account = null;
    toast(`Your key is no longer accepted (${error.code}). Sign in again.`);
    render();
    return;
  }
  if (error instanceof ApiError) toast(error.status ? `${error.message} (${error.code})` : error.message);
  else {
    toast(`Something went wrong in the console: ${error && error.message}`);
    console.error(error);
  }
}

// The context a view is given.
function context() {
  const site = account.sites.find((s) => s.site_id === state.site);
  return {
    state,
    site,
    admin: account.admin,
    navigate,
    fail,
    every(ms, fn) {
      timers.push(setInterval(() => document.hidden || fn(), ms));
    },
    dateRange() {
      return state.period === "custom" && state.from && state.to ? [state.from, state.to] : state.period === "custom" ? "7d" : state.period;
    },
    filterList() {
      return state.filters.map(([dimension, value]) => ["is", dimension, [value]]);
    },
    addFilter(dimension, value) {
      const filters = state.filters.filter(([d]) => d !== dimension);
      filters.push([dimension, value]);
      navigate({ filters, view: "overview" });
    },
    // POST /v1/query with the site, the view's range and filters filled in.
    query(body) {
      return query({
        site_id: state.site,
        date_range: this.dateRange(),
        ...body,
        filters: [...this.filterList(), ...(body.filters || [])],
      });
    },
  };
}

function signIn(message) {
  const input = h("input", { id: "key", type: "password", autocomplete: "off", spellcheck: "false", required: true });
  const error = h("p", { class: "error-text", id: "signin-error", role: "alert" }, message || "");
  const form = h(
    "form",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        const value = input.value.trim();
        try {
          const answer = await call("/v1/sites", { withKey: value });
          if (!answer.sites.length) {
            error.textContent = "This key may not read any site of this pipeline.";
            return;
          }
          key.set(value);
          account = answer;
          if (!answer.sites.some((s) => s.site_id === state.site)) navigate({ site: answer.sites[0].site_id }, { push: false });
          else render();
        } catch (err) {
          error.textContent = err instanceof ApiError && err.status ? `${err.message} (${err.code})` : err.message;
        }
      },
    },
    h("label", { for: "key" }, "API key (a site's read key, or the pipeline's admin key)"),
    input,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    error,
    h("p", { class: "muted" }, "The key stays in this tab only (session storage) and is sent to this server's API with each request."),
  );
  fill(root, h("main", { id: "main", class: "signin card" }, h("h1", {}, "Sign in to Tally"), form));
  input.focus();
}

function themeButton() {
  const dark = document.documentElement.dataset.theme === "dark";
  return h(
    "button",
    {
      type: "button",
      id: "theme",
      "aria-pressed": dark ? "true" : "false",
      onclick: () => {
        const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
        document.documentElement.dataset.theme = next;
        try {
          localStorage.setItem("tally.theme", next);
        } catch {}
        render();
      },
    },
    dark ? "Light mode" : "Dark mode",
  );
}

function header() {
  const sites = account.sites.map((s) => [s.site_id, s.site_id]);
  const custom = state.period === "custom";
  const from = h("input", { type: "date", id: "from", value: state.from, "aria-label": "From" });
  const to = h("input", { type: "date", id: "to", value: state.to, "aria-label": "To" });
  return h(
    "header",
    { class: "top" },
    h("p", { class: "brand" }, "Tally"),
    h(
      "div",
      { class: "controls" },
      select("Site", "site", sites, state.site, (site) => navigate({ site, filters: [], exp: "", session: "", event: "", prop: "" })),
      select("Range", "period", PERIODS, state.period, (period) => navigate({ period })),
      custom
        ? h(
            "form",
            {
              class: "control",
              onsubmit: (e) => {
                e.preventDefault();
                if (from.value && to.value && from.value <= to.value) navigate({ from: from.value, to: to.value });
                else toast("Pick a start date that is not after the end date.");
              },
            },
            from,
            to,
            h("button", { type: "submit" }, "Apply"),
          )
        : null,
    ),
    h(
      "div",
      { class: "end" },
      themeButton(),
      h(
        "button",
        {
          type: "button",
          onclick: () => {
            key.clear();
            account = null;
            render();
          },
        },
        "Sign out",
      ),
    ),
  );
}

function nav() {
  return h(
    "nav",
    { class: "views", "aria-label": "Views" },
    VIEWS.map(([id, label]) => {
      const p = new URLSearchParams(location.search);
      p.set("view", id);
      return h(
        "a",
        {
          href: `?${p}`,
          "aria-current": state.view === id ? "page" : null,
          onclick: (e) => {
            e.preventDefault();
            navigate({ view: id, session: "", exp: id === "experiments" ? state.exp : "" });
          },
        },
        label,
      );
    }),
  );
}

function render() {
  stopTimers();
  if (!key.get()) return signIn();
  if (!account) return start();
  if (!account.sites.some((s) => s.site_id === state.site)) {
    state.site = account.sites[0].site_id;
    writeUrl(state, false);
  }
  const main = h("main", { id: "main" });
  fill(root, header(), nav(), main);
  const view = VIEWS.find(([id]) => id === state.view) || VIEWS[0];
  document.title = `${view[1]} · ${state.site} · Tally`;
  view[2](main, context());
}

async function start() {
  try {
    account = await call("/v1/sites");
    render();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      key.clear();
      signIn("Your key is no longer accepted. Sign in again.");
    } else {
      fill(root, h("main", { id: "main" }, h("h1", {}, "Tally"), h("p", { class: "error-text" }, e.message)));
      fail(e);
    }
  }
}

window.addEventListener("popstate", () => {
  state = readState();
  render();
});
render();
