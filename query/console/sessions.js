// Sessions: the session browser with its search, and one session's events in order.
import { h, fill } from "./ui.js";
import { call } from "./api.js";
import { duration, full, instant } from "./format.js";
import { dataTable } from "./table.js";

export function sessions(main, ctx) {
  if (ctx.state.session) return oneSession(main, ctx);
  const range = ctx.dateRange();
  const search = h("input", { type: "search", id: "session-search", value: ctx.state.q, maxlength: 200, placeholder: "a page, a title, a property…" });
  main.append(
    h("h1", {}, `${ctx.site.site_id} · sessions`),
    h(
      "form",
      {
        class: "filters",
        role: "search",
        onsubmit: (e) => {
          e.preventDefault();
          ctx.navigate({ q: search.value.trim() });
        },
      },
      h("label", { for: "session-search" }, "Search the sessions' events"),
      search,
      h("button", { type: "submit" }, "Search"),
    ),
  );
  const table = dataTable({
    title: "Sessions",
    pageSize: 20,
    columns: [
      { key: "started_at", label: "Started", format: instant, sortable: false },
      { key: "duration", label: "Duration", numeric: true, format: duration, sortable: false },
      { key: "events", label: "Events", numeric: true, sortable: false },
      { key: "page_views", label: "Page views", numeric: true, sortable: false },
      { key: "entry_page", label: "Entry page", sortable: false },
      { key: "exit_page", label: "Exit page", sortable: false },
      { key: "channel", label: "Channel", sortable: false },
      { key: "browser", label: "Browser", sortable: false },
      { key: "device", label: "Device", sortable: false },
      { key: "session_id", label: "Session", code: true, sortable: false },
    ],
    fetchRows: async ({ offset, limit }) => {
      const p = new URLSearchParams({
        site_id: ctx.state.site,
        date_range: Array.isArray(range) ? range.join(",") : range,
        limit: String(Math.min(limit, 1000)),
        offset: String(offset),
      });
      if (ctx.state.q) p.set("search", ctx.state.q);
      const answer = await call(`/v1/sessions?${p}`);
      return { rows: answer.sessions, total: answer.total, more: offset + answer.sessions.length < answer.total };
    },
    onPick: (row) => ctx.navigate({ session: row.session_id }),
    pickLabel: () => "Open this session's events",
    csvName: `${ctx.site.site_id}-sessions`,
    onError: ctx.fail,
    empty: ctx.state.q ? "No session in this range has an event with that text." : "No sessions in this range.",
  });
  main.append(h("section", { class: "card", "aria-label": "Sessions" }, table.el));
  table.reload();
}

async function oneSession(main, ctx) {
  const id = ctx.state.session;
  main.append(
    h("h1", {}, `Session ${id}`),
    h("p", {}, h("button", { type: "button", class: "link", onclick: () => ctx.navigate({ session: "" }) }, "← All sessions")),
  );
  const box = h("section", { class: "card", "aria-label": "The session's events" });
  main.append(box);
  let answer;
  try {
    answer = await call(`/v1/sessions/${encodeURIComponent(id)}?site_id=${encodeURIComponent(ctx.state.site)}`);
  } catch (e) {
    box.append(h("p", { class: "error-text" }, "This session could not be loaded."));
    return ctx.fail(e);
  }
  const first = answer.events.length ? new Date(answer.events[0].timestamp).getTime() : 0;
  const table = dataTable({
    title: "Events in order",
    pageSize: 50,
    columns: [
      { key: "timestamp", label: "Time", format: instant, sortable: false },
      { key: "offset", label: "After", numeric: true, format: duration, sortable: false },
      { key: "event_type", label: "Event", sortable: false },
      { key: "path", label: "Page", sortable: false },
      { key: "title", label: "Title", sortable: false },
      { key: "properties", label: "Properties", code: true, sortable: false },
    ],
    fetchRows: async ({ offset, limit }) => {
      const rows = answer.events.map((e) => ({ ...e, offset: (new Date(e.timestamp).getTime() - first) / 1000 }));
      return { rows: rows.slice(offset, offset + limit), total: rows.length, more: offset + limit < rows.length };
    },
    csvName: `${ctx.site.site_id}-session-${id}`,
    onError: ctx.fail,
  });
  fill(box, h("p", { class: "muted" }, `${full(answer.events.length)} events`), table.el);
  table.reload();
}
