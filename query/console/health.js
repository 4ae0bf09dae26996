// The pipeline: its backlog and rates as JetStream and ClickHouse have them (admin keys),
// and the dead letters with their reasons, which an admin may replay.
import { h, fill, toast } from "./ui.js";
import { call } from "./api.js";
import { full, duration, instant } from "./format.js";
import { dataTable } from "./table.js";

const FIGURES = [
  ["waiting", "Waiting", full],
  ["in_flight", "In flight", full],
  ["redelivered", "Redelivered", full],
  ["dead_lettered", "Dead letters", full],
  ["in_stream", "In the stream", full],
  ["stored", "Stored in ClickHouse", full],
  ["processor_lag_seconds", "Processor lag", duration],
  ["oldest_waiting_age_seconds", "Oldest waiting", (x) => (x === null ? "none" : duration(x))],
];

export function health(main, ctx) {
  main.append(h("h1", {}, "Pipeline health"));
  const figures = h("section", { class: "figures", "aria-label": "The pipeline's backlog", id: "health" });
  const rates = h("p", { class: "muted", id: "rates" });
  if (ctx.admin) {
    main.append(figures, rates);
    let last = null;
    const show = async () => {
      try {
        const now = await call("/v1/pipeline/health");
        fill(
          figures,
          FIGURES.map(([key, label, format]) =>
            h("div", { class: "figure", dataset: { metric: key, value: String(now[key] ?? "") } }, h("span", { class: "label" }, label), h("span", { class: "value" }, format(now[key]))),
          ),
        );
        if (last) {
          const seconds = (new Date(now.checked_at) - new Date(last.checked_at)) / 1000 || 5;
          const rate = (key) => Math.max(0, (now[key] - last[key]) / seconds);
          rates.textContent = `Over the last ${Math.round(seconds)} s: ${full(rate("in_stream"))} events/s in, ${full(rate("stored"))} rows/s stored. Checked ${instant(now.checked_at)}.`;
        } else rates.textContent = `Checked ${instant(now.checked_at)}; rates follow in 5 s.`;
        last = now;
      } catch (e) {
        ctx.fail(e);
      }
    };
    show();
    ctx.every(5_000, show);
  } else {
    main.append(h("p", { class: "notice" }, "The pipeline's backlog needs an admin key. This key sees its own site's dead letters."));
  }
  main.append(deadLetters(ctx));
}

function deadLetters(ctx) {
  const box = h("section", { class: "card", "aria-labelledby": "dead-letters-title" });
  // The cursor (`after`) of each page's first letter, by the page's offset.
  const cursors = new Map([[0, null]]);
  const table = dataTable({
    title: "Dead letters",
    pageSize: 20,
    columns: [
      { key: "sequence", label: "#", numeric: true, sortable: false },
      { key: "dead_lettered_at", label: "Given up", format: instant, sortable: false },
      { key: "site_id", label: "Site", sortable: false },
      { key: "kind", label: "Kind", sortable: false },
      { key: "reason", label: "Reason", sortable: false },
      { key: "deliveries", label: "Deliveries", numeric: true, sortable: false },
      { key: "event_id", label: "Event", code: true, sortable: false },
    ],
    fetchRows: async ({ offset, limit }) => {
      const p = new URLSearchParams({ limit: String(Math.min(limit, 500)) });
      // An admin sees every site's letters; a site's key its own.
      if (!ctx.admin) p.set("site_id", ctx.state.site);
      const after = cursors.get(offset);
      if (after) p.set("after", String(after));
      const answer = await call(`/v1/pipeline/dead-letters?${p}`);
      if (answer.next_after !== null) cursors.set(offset + limit, answer.next_after);
      return { rows: answer.dead_letters, total: null, more: answer.next_after !== null };
    },
    onPick: ctx.admin ? (row) => replay(ctx, [row.sequence], table) : null,
    pickLabel: (row) => `Replay dead letter ${row.sequence}`,
    csvName: "dead-letters",
    onError: ctx.fail,
    empty: "No dead letters: every event was stored.",
    extra: ctx.admin
      ? h("button", { type: "button", id: "replay-page", onclick: () => replayShown(ctx, table, box) }, "Replay this page")
      : null,
  });
  fill(
    box,
    h("h2", { id: "dead-letters-title" }, "Dead letters"),
    h("p", { class: "muted" }, ctx.admin ? "Events given up on, with why. Click a letter's number to replay it (it is stored once, however often it is replayed)." : "Events of this site given up on, with why. Replays need an admin key."),
    table.el,
  );
  table.reload();
  return box;
}

async function replay(ctx, sequences, table) {
  try {
    const answer = await call("/v1/pipeline/dead-letters/replay", { body: { sequences } });
    const missing = answer.results.filter((r) => r.outcome !== "replayed");
    toast(`Replayed ${answer.replayed} of ${sequences.length}${missing.length ? `; ${missing.map((r) => `#${r.sequence} ${r.outcome}`).join(", ")}` : ""}.`, "info");
    await table.reload();
  } catch (e) {
    ctx.fail(e);
  }
}

function replayShown(ctx, table, box) {
  const sequences = [...box.querySelectorAll('td[data-key="sequence"]')].map((td) => Number(td.dataset.value));
  if (sequences.length) replay(ctx, sequences, table);
  else toast("No dead letters to replay.", "info");
}
