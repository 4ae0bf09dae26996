// A table of rows fetched page by page: sortable columns, a pager and CSV export. What to
// show comes from `fetchRows({offset, limit, sort})`, which answers `{rows, total, more}`
// (`total` null when unknown; `more` whether a next page exists).
import { h, fill, download } from "./ui.js";
import { full } from "./format.js";

const CSV_ROWS = 10_000;

// columns: [{key, label, format, numeric, sortable, code}]; `onPick(row)` makes the first
// cell a button (a filter, or opening the row); `pickLabel(row)` names that action.
export function dataTable({ title, columns, fetchRows, pageSize = 10, onPick, pickLabel, csvName, sort, onError, empty, extra }) {
  let offset = 0;
  let order = sort || null;
  let loaded = { rows: [], total: null, more: false };
  const body = h("tbody");
  const status = h("span", { class: "muted" });
  const hidden = (text) => h("span", { class: "visually-hidden" }, text);
  const prev = h("button", { type: "button", onclick: () => page(-1) }, h("span", { "aria-hidden": "true" }, "‹ "), "Prev", hidden(` page of ${title}`));
  const next = h("button", { type: "button", onclick: () => page(1) }, "Next", hidden(` page of ${title}`), h("span", { "aria-hidden": "true" }, " ›"));
  const head = h("tr");
  const table = h("table", {}, h("caption", { class: "visually-hidden" }, title), h("thead", {}, head), body);
  const csv = csvName
    ? h("button", { type: "button", onclick: exportCsv, "aria-label": `Export ${title} as CSV` }, "CSV")
    : null;
  const el = h(
    "div",
    { class: "data-table" },
    h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": `${title}, table` }, table),
    h("div", { class: "table-foot" }, status, h("span", { class: "pager" }, prev, next, csv, extra || null)),
  );

  function renderHead() {
    fill(
      head,
      columns.map((c) => {
        const sortable = c.sortable !== false;
        const state = order && order.key === c.key ? (order.desc ? "descending" : "ascending") : "none";
        const label = sortable
          ? h("button", { type: "button", onclick: () => sortBy(c) }, c.label, state === "none" ? "" : state === "descending" ? " ▼" : " ▲")
          : c.label;
        return h("th", { scope: "col", class: c.numeric ? "num" : null, "aria-sort": sortable ? state : null }, label);
      }),
    );
  }

  function cell(c, row, first) {
    const value = row[c.key];
    const text = c.format ? c.format(value, row) : value === "" ? "(none)" : typeof value === "number" ? full(value) : value ?? "–";
    const content =
      first && onPick
        ? h("button", { type: "button", class: "link", onclick: () => onPick(row), title: pickLabel ? pickLabel(row) : null }, text)
        : text;
    return h("td", { class: c.numeric ? "num" : c.code ? "code" : null, dataset: { key: c.key, value: typeof value === "object" ? JSON.stringify(value) : String(value ?? "") } }, content);
  }

  function renderBody() {
    if (!loaded.rows.length) {
      fill(body, h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty || "Nothing in this range.")));
    } else {
      fill(body, loaded.rows.map((row) => h("tr", {}, columns.map((c, i) => cell(c, row, i === 0)))));
    }
    const last = offset + loaded.rows.length;
    status.textContent = loaded.rows.length
      ? `${full(offset + 1)}–${full(last)}${loaded.total !== null ? ` of ${full(loaded.total)}` : ""}`
      : "";
    prev.disabled = offset === 0;
    next.disabled = !loaded.more;
  }

  // aria-busy while a page loads: screen readers wait, and so do the browser tests.
  async function load() {
    el.setAttribute("aria-busy", "true");
    try {
      loaded = await fetchRows({ offset, limit: pageSize, sort: order });
    } catch (e) {
      loaded = { rows: [], total: null, more: false };
      if (onError) onError(e);
    }
    renderBody();
    el.removeAttribute("aria-busy");
  }

  function page(step) {
    offset = Math.max(0, offset + step * pageSize);
    load();
  }

  function sortBy(column) {
    order = order && order.key === column.key ? { key: column.key, desc: !order.desc } : { key: column.key, desc: !!column.numeric };
    offset = 0;
    renderHead();
    load();
  }

  async function exportCsv() {
    try {
      const all = await fetchRows({ offset: 0, limit: CSV_ROWS, sort: order });
      const lines = [columns.map((c) => csvField(c.label))];
      for (const row of all.rows) lines.push(columns.map((c) => csvField(row[c.key])));
      download(`${csvName}.csv`, lines.map((l) => l.join(",")).join("\r\n") + "\r\n");
    } catch (e) {
      if (onError) onError(e);
    }
  }

  renderHead();
  renderBody();
  return {
    el,
    reload() {
      offset = 0;
      return load();
    },
  };
}

// One CSV field (RFC 4180). Text that a spreadsheet would run as a formula gets a leading
// apostrophe.
function csvField(value) {
  let text = value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

// fetchRows for a /v1/query breakdown: `build({limit, offset, order_by})` makes the body;
// rows become objects keyed by `names` (the dimensions', then the metrics').
export function queryRows(run, build, names) {
  return async ({ offset, limit, sort }) => {
    const body = build();
    body.pagination = { limit, offset };
    body.include = { ...(body.include || {}), total_rows: true };
    if (sort) body.order_by = [[sort.key, sort.desc ? "desc" : "asc"]];
    const answer = await run(body);
    const rows = answer.results.map((r) => {
      const values = [...r.dimensions, ...r.metrics];
      return Object.fromEntries(names.map((n, i) => [n, values[i]]));
    });
    const total = answer.meta.total_rows ?? null;
    return { rows, total, more: total !== null ? offset + rows.length < total : rows.length === limit };
  };
}
