// Experiments: the site's list, and one experiment's variants compared by its goal, with
// the uplift's confidence interval, the significance and the sample-ratio check.
import { h, fill } from "./ui.js";
import { call } from "./api.js";
import { full, percent } from "./format.js";
import { dataTable } from "./table.js";

const site = (ctx) => encodeURIComponent(ctx.state.site);

export async function experiments(main, ctx) {
  main.append(h("h1", {}, `${ctx.site.site_id} · experiments`));
  const list = h("section", { class: "card", "aria-labelledby": "experiments-title" }, h("h2", { id: "experiments-title" }, "Experiments"));
  const detail = h("section", { class: "card", id: "experiment", "aria-live": "polite" });
  main.append(list, h("div", { class: "grid" }, h("div", { class: "wide" }, detail)));
  let answer;
  try {
    answer = await call(`/v1/experiments?site_id=${site(ctx)}`);
  } catch (e) {
    return ctx.fail(e);
  }
  if (!answer.experiments.length) {
    list.append(h("p", { class: "muted" }, "This site declares no experiments (spec.experiments of its AnalyticsSite)."));
    detail.remove();
    return;
  }
  const table = dataTable({
    title: "Experiments",
    columns: [
      { key: "id", label: "Experiment", sortable: false },
      { key: "description", label: "Description", sortable: false },
      { key: "status", label: "Status", sortable: false },
      { key: "variants", label: "Variants", sortable: false, format: (v) => v.map((x) => x.name).join(", ") },
      { key: "goal", label: "Goal", sortable: false },
      { key: "start", label: "Start", sortable: false },
    ],
    fetchRows: async ({ offset, limit }) => ({
      rows: answer.experiments.slice(offset, offset + limit),
      total: answer.experiments.length,
      more: offset + limit < answer.experiments.length,
    }),
    onPick: (row) => ctx.navigate({ exp: row.id }),
    pickLabel: (row) => `Open experiment ${row.id}`,
    onError: ctx.fail,
  });
  list.append(table.el);
  table.reload();
  const chosen = answer.experiments.find((x) => x.id === ctx.state.exp) || answer.experiments[0];
  summary(ctx, chosen, detail);
}

async function summary(ctx, experiment, box) {
  fill(box, h("h2", {}, experiment.id), h("p", { class: "muted" }, "Loading…"));
  let s;
  try {
    s = await call(`/v1/experiments/${encodeURIComponent(experiment.id)}/summary?site_id=${site(ctx)}`);
  } catch (e) {
    fill(box, h("h2", {}, experiment.id), h("p", { class: "error-text" }, "The summary could not be loaded."));
    return ctx.fail(e);
  }
  const uplift = new Map(s.comparisons.map((c) => [c.variant, c.uplift]));
  const rows = Object.entries(s.variants).map(([name, v]) => {
    const u = uplift.get(name);
    return {
      variant: name + (name === s.control ? " (control)" : ""),
      users: v.users,
      conversions: v.conversions,
      conversionRate: v.conversionRate,
      absoluteUplift: u ? u.absoluteUplift : null,
      relativeUplift: u ? u.relativeUplift : null,
      interval: u ? u.confidenceInterval : null,
      pValue: u ? u.pValue : null,
      significant: name === s.control ? "control" : u ? (u.significant ? "yes" : "no") : "not yet",
    };
  });
  const points = (x) => (x === null || x === undefined ? "–" : `${x > 0 ? "+" : ""}${x.toFixed(2)} pts`);
  const columns = [
    { key: "variant", label: "Variant" },
    { key: "users", label: "Users", numeric: true, format: full },
    { key: "conversions", label: "Conversions", numeric: true, format: full },
    { key: "conversionRate", label: "Conversion rate", numeric: true, format: percent },
    { key: "absoluteUplift", label: "Uplift", numeric: true, format: points },
    { key: "relativeUplift", label: "Relative uplift", numeric: true, format: (x) => (x === null ? "–" : `${x > 0 ? "+" : ""}${percent(x)}`) },
    { key: "interval", label: "95% interval", numeric: true, sortable: false, format: (i) => (i ? `${i[0].toFixed(2)} to ${i[1].toFixed(2)} pts` : "–") },
    { key: "pValue", label: "p-value", numeric: true, format: (p) => (p === null ? "–" : p.toFixed(4)) },
    { key: "significant", label: "Significant (p < 0.05)" },
  ];
  const table = dataTable({
    title: `Variants of ${experiment.id}`,
    columns,
    fetchRows: async ({ sort }) => {
      const sorted = [...rows];
      if (sort) sorted.sort((a, b) => (a[sort.key] > b[sort.key] ? 1 : a[sort.key] < b[sort.key] ? -1 : 0) * (sort.desc ? -1 : 1));
      return { rows: sorted, total: rows.length, more: false };
    },
    pageSize: 50,
    csvName: `${ctx.site.site_id}-experiment-${experiment.id}`,
    onError: ctx.fail,
  });
  fill(
    box,
    h("h2", {}, `${experiment.id}: ${experiment.description || ""}`),
    h("p", { class: "muted" }, `Goal ${s.goal} · control ${s.control} · ${s.status} · from ${s.startDate || "the first event"} to ${s.endDate || "now"}`),
    s.sampleRatio && s.sampleRatio.mismatch
      ? h(
          "p",
          { class: "notice", role: "alert", id: "sample-ratio" },
          `Sample ratio mismatch: the users per variant differ from the planned weights (chi-square ${s.sampleRatio.chiSquare.toFixed(2)}, p = ${s.sampleRatio.pValue}). The assignment is broken somewhere; do not trust the comparison.`,
        )
      : h("p", { class: "muted", id: "sample-ratio" }, `Sample ratio as planned (p = ${s.sampleRatio ? s.sampleRatio.pValue : "–"}).`),
    h(
      "div",
      { class: "kv" },
      h("div", { class: "figure", dataset: { metric: "uniqueUsers", value: String(s.uniqueUsers) } }, h("span", { class: "label" }, "Users"), h("span", { class: "value" }, full(s.uniqueUsers))),
      h("div", { class: "figure", dataset: { metric: "totalEvents", value: String(s.totalEvents) } }, h("span", { class: "label" }, "Events"), h("span", { class: "value" }, full(s.totalEvents))),
      h("div", { class: "figure", dataset: { metric: "usersInSeveralVariants", value: String(s.usersInSeveralVariants) } }, h("span", { class: "label" }, "Users in several variants"), h("span", { class: "value" }, full(s.usersInSeveralVariants))),
    ),
    table.el,
  );
  table.reload();
}


