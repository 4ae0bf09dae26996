// The overview: top figures against the previous period, the main graph, the realtime
// figure and live table (every 5 s), and the breakdown panels; a click on a row filters
// the whole view by it.
import { h, fill, tabs } from "./ui.js";
import { call } from "./api.js";
import { compact, metricFormat, changeLabel, instant, dimensionName } from "./format.js";
import { lineChart, donut } from "./chart.js";
import { dataTable, queryRows } from "./table.js";

const FIGURES = [
  ["visitors", "Unique visitors"],
  ["visits", "Total visits"],
  ["pageviews", "Total pageviews"],
  ["views_per_visit", "Views per visit"],
  ["bounce_rate", "Bounce rate"],
  ["visit_duration", "Visit duration"],
];
const REFRESH_MS = 5_000;
const PAGE_VIEWS = [["is", "event:name", ["page_view"]]];

// The breakdown panels: each tab is a dimension with its metrics.
const PANELS = [
  {
    id: "pages",
    title: "Pages",
    tabs: [
      { dimension: "event:page", label: "Top pages", metrics: ["visitors", "pageviews"], filters: PAGE_VIEWS },
      { dimension: "visit:entry_page", label: "Entry pages", metrics: ["visitors", "visits"] },
      { dimension: "visit:exit_page", label: "Exit pages", metrics: ["visitors", "visits"] },
    ],
  },
  {
    id: "sources",
    title: "Sources",
    tabs: [
      { dimension: "visit:channel", label: "Channels", metrics: ["visitors", "visits", "bounce_rate"] },
      { dimension: "visit:source", label: "Sources", metrics: ["visitors", "visits", "bounce_rate"] },
      { dimension: "visit:referrer", label: "Referrers", metrics: ["visitors", "visits", "bounce_rate"] },
      { dimension: "visit:utm_campaign", label: "Campaigns", metrics: ["visitors", "visits", "bounce_rate"] },
      { dimension: "visit:utm_source", label: "UTM sources", metrics: ["visitors", "visits", "bounce_rate"] },
      { dimension: "visit:utm_medium", label: "UTM mediums", metrics: ["visitors", "visits", "bounce_rate"] },
    ],
  },
  {
    id: "devices",
    title: "Devices",
    tabs: [
      { dimension: "visit:browser", label: "Browsers", metrics: ["visitors", "percentage"] },
      { dimension: "visit:os", label: "Operating systems", metrics: ["visitors", "percentage"] },
      { dimension: "visit:device", label: "Devices", metrics: ["visitors", "percentage"] },
    ],
  },
];
const METRIC_LABELS = {
  visitors: "Visitors",
  visits: "Visits",
  pageviews: "Pageviews",
  events: "Events",
  bounce_rate: "Bounce rate",
  percentage: "Share",
  conversion_rate: "Conversion rate",
};
// Which tab of each panel is open (kept while the page lives).
const openTabs = new Map();

export function overview(main, view) {
  // The top figures are asked first and alone: the panels' requests wait until they show,
  // so that on a big history the figures are not queued behind a dozen breakdowns.
  let figuresShown;
  const shown = new Promise((resolve) => (figuresShown = resolve));
  const ctx = { ...view, later: (fn) => shown.then(fn), figuresShown: () => figuresShown() };
  const figures = h("section", { class: "figures", "aria-label": "Top figures" });
  const graph = h("section", { class: "card", "aria-labelledby": "graph-title" });
  const realtime = h("span", { class: "figure realtime", id: "realtime", "aria-live": "polite" });
  fill(
    main,
    h("h1", {}, `${ctx.site.site_id} · overview`),
    filterBar(ctx),
    figures,
    graph,
    h("div", { class: "grid" }, PANELS.map((p) => panel(p, ctx)), eventsPanel(ctx), goalsPanel(ctx), propertiesPanel(ctx), liveTable(ctx)),
  );
  topFigures(ctx, figures, realtime, graph);
}

function filterBar(ctx) {
  const { filters } = ctx.state;
  if (!filters.length) return null;
  return h(
    "div",
    { class: "filters", "aria-label": "Filters" },
    h("span", { class: "muted" }, "Filtered by"),
    filters.map(([dimension, value], i) =>
      h(
        "span",
        { class: "chip", dataset: { dimension, value } },
        `${dimensionName(dimension)} is ${value === "" ? "(none)" : value}`,
        h(
          "button",
          {
            type: "button",
            "aria-label": `Remove the filter ${dimensionName(dimension)} is ${value}`,
            onclick: () => ctx.navigate({ filters: filters.filter((_, j) => j !== i) }),
          },
          "×",
        ),
      ),
    ),
    h("button", { type: "button", onclick: () => ctx.navigate({ filters: [] }) }, "Clear all"),
  );
}

async function topFigures(ctx, box, realtime, graph) {
  fill(box, h("p", { class: "muted" }, "Loading figures…"));
  box.setAttribute("aria-busy", "true");
  let answer;
  try {
    answer = await ctx.query({ metrics: FIGURES.map(([m]) => m), include: { comparisons: "previous_period" } });
  } catch (e) {
    fill(box, h("p", { class: "error-text" }, "The figures could not be loaded."));
    box.removeAttribute("aria-busy");
    graph.remove();
    ctx.figuresShown();
    return ctx.fail(e);
  }
  box.removeAttribute("aria-busy");
  const row = answer.results[0] || { metrics: FIGURES.map(() => 0), comparison: null };
  fill(
    box,
    FIGURES.map(([metric, label], i) => {
      const value = row.metrics[i];
      const change = changeLabel(metric, row.comparison ? row.comparison.change[i] : null);
      return h(
        "button",
        {
          type: "button",
          class: "figure",
          "aria-pressed": ctx.state.metric === metric ? "true" : "false",
          dataset: { metric, value: String(value ?? "") },
          onclick: () => ctx.navigate({ metric }, { push: false }),
        },
        h("span", { class: "label" }, label),
        h("span", { class: "value" }, metricFormat(metric)(value)),
        h("span", { class: `change ${change.direction}` }, h("span", { class: "visually-hidden" }, "Against the previous period: "), change.text),
      );
    }),
    realtime,
  );
  ctx.figuresShown();
  showRealtime(ctx, realtime);
  ctx.every(REFRESH_MS, () => showRealtime(ctx, realtime));
  mainGraph(ctx, graph, answer.query.date_range, answer.meta.comparison_date_range);
}

async function showRealtime(ctx, box) {
  const now = Date.now();
  try {
    const answer = await ctx.query({
      metrics: ["visitors"],
      date_range: [new Date(now - 5 * 60_000).toISOString(), new Date(now + 1000).toISOString()],
    });
    const visitors = answer.results[0] ? answer.results[0].metrics[0] : 0;
    fill(
      box,
      h("span", { class: "label" }, h("span", { class: "dot", "aria-hidden": "true" }), "Visitors in the last 5 minutes"),
      h("span", { class: "value", dataset: { value: String(visitors) } }, compact(visitors)),
      h("span", { class: "change same" }, "refreshed every 5 s"),
    );
  } catch (e) {
    ctx.fail(e);
  }
}

// Every bucket from `from` to `to` (dates), as the API names them.
function buckets(range, hourly) {
  const [from, to] = range;
  const out = [];
  const day = new Date(`${from}T00:00:00Z`);
  const end = new Date(`${to}T00:00:00Z`);
  for (; day <= end && out.length < 3700; day.setUTCDate(day.getUTCDate() + 1)) {
    const date = day.toISOString().slice(0, 10);
    if (!hourly) out.push(date);
    else for (let hour = 0; hour < 24; hour++) out.push(`${date} ${String(hour).padStart(2, "0")}:00:00`);
  }
  return out;
}

async function mainGraph(ctx, box, range, previousRange) {
  const metric = ctx.state.metric;
  const label = (FIGURES.find(([m]) => m === metric) || FIGURES[0])[1];
  const hourly = range[0] === range[1];
  const dimension = hourly ? "time:hour" : "time:day";
  const title = `${label} by ${hourly ? "hour" : "day"}`;
  fill(box, h("h2", { id: "graph-title" }, title), h("p", { class: "muted" }, "Loading…"));
  box.setAttribute("aria-busy", "true");
  try {
    const ask = (date_range) => ctx.query({ metrics: [metric], dimensions: [dimension], date_range });
    const [now, before] = await Promise.all([ask(range), previousRange ? ask(previousRange) : null]);
    const values = (answer, names) => {
      const by = new Map(answer.results.map((r) => [r.dimensions[0], r.metrics[0] ?? 0]));
      return names.map((n) => by.get(n) ?? 0);
    };
    const labels = buckets(range, hourly);
    const previous = before ? values(before, buckets(previousRange, hourly)).slice(0, labels.length) : null;
    while (previous && previous.length < labels.length) previous.push(0);
    fill(
      box,
      h("div", { class: "panel-head" }, h("h2", { id: "graph-title" }, title), h("span", { class: "muted" }, `${range[0]} – ${range[1]}`)),
      lineChart({
        labels: labels.map((l) => (hourly ? l.slice(11, 16) : l.slice(5))),
        current: values(now, labels),
        previous,
        format: metricFormat(metric),
        title: `${title}, this period and the previous one`,
        seriesNames: ["This period", "Previous period"],
      }),
    );
    box.removeAttribute("aria-busy");
  } catch (e) {
    box.removeAttribute("aria-busy");
    fill(box, h("h2", { id: "graph-title" }, title), h("p", { class: "error-text" }, "The graph could not be loaded."));
    ctx.fail(e);
  }
}

function metricColumns(metrics) {
  return metrics.map((m) => ({ key: m, label: METRIC_LABELS[m] || m, numeric: true, format: metricFormat(m) }));
}

// A breakdown table of `dimension`: rows filter the view when clicked.
function breakdown(ctx, { dimension, label, metrics, filters }) {
  const table = dataTable({
    title: label,
    columns: [{ key: dimension, label: dimensionName(dimension) }, ...metricColumns(metrics)],
    fetchRows: queryRows((body) => ctx.query(body), () => ({ metrics, dimensions: [dimension], filters: filters || [] }), [dimension, ...metrics]),
    onPick: (row) => ctx.addFilter(dimension, row[dimension]),
    pickLabel: (row) => `Filter by ${dimensionName(dimension)} ${row[dimension]}`,
    csvName: `${ctx.site.site_id}-${dimension.replace(/[^a-z0-9]+/gi, "-")}`,
    onError: ctx.fail,
  });
  ctx.later(() => table.reload());
  return table.el;
}

function panel(spec, ctx) {
  const box = h("section", { class: "card", id: `panel-${spec.id}`, "aria-labelledby": `panel-${spec.id}-title` });
  const show = () => {
    const chosen = openTabs.get(spec.id) || spec.tabs[0].dimension;
    const tab = spec.tabs.find((t) => t.dimension === chosen) || spec.tabs[0];
    fill(
      box,
      h("h2", { id: `panel-${spec.id}-title` }, spec.title),
      tabs(`${spec.title}: what to break down by`, spec.tabs.map((t) => [t.dimension, t.label]), tab.dimension, (d) => {
        openTabs.set(spec.id, d);
        show();
      }),
      breakdown(ctx, tab),
    );
  };
  show();
  return box;
}

function eventsPanel(ctx) {
  const box = h("section", { class: "card", id: "panel-events", "aria-labelledby": "panel-events-title" });
  const chart = h("div");
  fill(
    box,
    h("h2", { id: "panel-events-title" }, "Events by type"),
    h("div", { class: "donut-wrap" }, chart, breakdown(ctx, { dimension: "event:name", label: "Events by type", metrics: ["events", "visitors"] })),
  );
  ctx
    .later(() => ctx.query({ metrics: ["events"], dimensions: ["event:name"], pagination: { limit: 100 } }))
    .then((answer) => {
      const rows = answer.results.map((r) => ({ label: r.dimensions[0], value: r.metrics[0] }));
      if (!rows.length) return;
      const pie = donut(rows, "Share of events by type");
      fill(chart, pie.svg, h("ul", { class: "legend", "aria-hidden": "true" }, pie.keys.map((k) => h("li", {}, h("span", { class: `key ${k.slice}` }), k.label))));
    })
    .catch(ctx.fail);
  return box;
}

function goalsPanel(ctx) {
  const box = h("section", { class: "card", id: "panel-goals", "aria-labelledby": "panel-goals-title" });
  box.append(h("h2", { id: "panel-goals-title" }, "Goals"));
  if (!ctx.site.goals.length) {
    box.append(h("p", { class: "muted" }, "This site declares no goals (spec.goals of its AnalyticsSite)."));
    return box;
  }
  box.append(
    breakdown(ctx, { dimension: "event:goal", label: "Goals and their conversion rates", metrics: ["visitors", "events", "conversion_rate"] }),
  );
  return box;
}

// Custom properties: the values of one property of one event type.
function propertiesPanel(ctx) {
  const { event, prop } = ctx.state;
  const box = h("section", { class: "card", id: "panel-properties", "aria-labelledby": "panel-properties-title" });
  const events = h("select", { id: "property-event" }, h("option", { value: "" }, "Pick an event"));
  const keys = h("datalist", { id: "property-keys" });
  const name = h("input", { id: "property-name", list: "property-keys", value: prop, placeholder: "e.g. plan", autocomplete: "off" });
  const suggest = async () => {
    if (!events.value) return;
    try {
      const recent = await call(`/v1/events/recent?site_id=${encodeURIComponent(ctx.state.site)}&limit=200`);
      const seen = new Set();
      for (const e of recent.events) {
        if (e.event_type !== events.value) continue;
        try {
          for (const k of Object.keys(JSON.parse(e.properties || "{}"))) seen.add(k);
        } catch {}
      }
      fill(keys, [...seen].sort().map((k) => h("option", { value: k })));
    } catch (e) {
      ctx.fail(e);
    }
  };
  events.addEventListener("change", suggest);
  const form = h(
    "form",
    {
      class: "property-picker",
      onsubmit: (e) => {
        e.preventDefault();
        ctx.navigate({ event: events.value, prop: name.value.trim() }, { push: false });
      },
    },
    h("label", { for: "property-event" }, "Event"),
    events,
    h("label", { for: "property-name" }, "Property"),
    name,
    keys,
    h("button", { type: "submit" }, "Show"),
  );
  box.append(h("h2", { id: "panel-properties-title" }, "Custom properties"), form);
  ctx
    .later(() => ctx.query({ metrics: ["events"], dimensions: ["event:name"], pagination: { limit: 100 } }))
    .then((answer) => {
      for (const r of answer.results) events.append(h("option", { value: r.dimensions[0], selected: r.dimensions[0] === event }, r.dimensions[0]));
      if (event) suggest();
    })
    .catch(ctx.fail);
  if (event && prop) {
    box.append(
      breakdown(ctx, {
        dimension: `event:props:${prop}`,
        label: `${prop} of ${event} events`,
        metrics: ["events", "visitors"],
        filters: [["is", "event:name", [event]]],
      }),
    );
  } else {
    box.append(h("p", { class: "muted" }, "Pick an event and one of its properties to see its values."));
  }
  return box;
}

// The site's latest events, refreshed every 5 s (all of them: this table is not filtered).
function liveTable(ctx) {
  const box = h("section", { class: "card wide", id: "panel-live", "aria-labelledby": "panel-live-title" });
  const table = dataTable({
    title: "Latest events",
    pageSize: 20,
    columns: [
      { key: "timestamp", label: "Time", format: instant, sortable: false },
      { key: "event_type", label: "Event", sortable: false },
      { key: "path", label: "Page", sortable: false },
      { key: "channel", label: "Channel", sortable: false },
      { key: "browser", label: "Browser", sortable: false },
      { key: "device", label: "Device", sortable: false },
      { key: "properties", label: "Properties", code: true, sortable: false },
    ],
    fetchRows: async ({ limit }) => {
      const answer = await call(`/v1/events/recent?site_id=${encodeURIComponent(ctx.state.site)}&limit=${Math.min(limit, 1000)}`);
      return { rows: answer.events, total: null, more: false };
    },
    csvName: `${ctx.site.site_id}-latest-events`,
    onError: ctx.fail,
    empty: "No events yet.",
  });
  fill(
    box,
    h("div", { class: "panel-head" }, h("h2", { id: "panel-live-title" }, "Latest events"), h("span", { class: "muted" }, "live, every 5 s, unfiltered")),
    table.el,
  );
  ctx.later(() => table.reload());
  ctx.every(REFRESH_MS, () => table.reload());
  return box;
}
