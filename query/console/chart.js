// Charts as SVG: the main graph (this period and the previous one) and the events pie.
import { h } from "./ui.js";

const WIDTH = 800;
const HEIGHT = 240;
const PAD = { top: 12, right: 12, bottom: 28, left: 48 };

// A "nice" top for the y axis: 1, 2, 2.5 or 5 times a power of ten, at least `max`.
function niceTop(max) {
  if (max <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= max) return step * power;
  return 10 * power;
}

// `labels`: one x label per bucket; `current` and `previous`: one value per bucket
// (`previous` may be null). `format` formats the y values; `title` names the chart for
// screen readers, which also get the figures as a table.
export function lineChart({ labels, current, previous, format, title, seriesNames }) {
  const n = labels.length;
  const top = niceTop(Math.max(0, ...current, ...(previous || [])));
  const x = (i) => PAD.left + (n <= 1 ? 0 : (i * (WIDTH - PAD.left - PAD.right)) / (n - 1));
  const y = (v) => PAD.top + (HEIGHT - PAD.top - PAD.bottom) * (1 - v / top);
  const path = (values) => values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join("");
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => f * top);
  const every = Math.max(1, Math.ceil(n / 8));
  const svg = h(
    "svg:svg",
    { class: "chart", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": title },
    ticks.map((t) => [
      h("svg:line", { class: "grid-line", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(t), y2: y(t) }),
      h("svg:text", { class: "axis", x: PAD.left - 6, y: y(t) + 4, "text-anchor": "end" }, format(t)),
    ]),
    labels.map((label, i) =>
      i % every === 0 ? h("svg:text", { class: "axis", x: x(i), y: HEIGHT - 8, "text-anchor": "middle" }, label) : null,
    ),
    n > 0
      ? h("svg:path", {
          class: "current-area",
          d: `${path(current)}L${x(n - 1).toFixed(1)},${y(0)}L${x(0).toFixed(1)},${y(0)}Z`,
        })
      : null,
    previous ? h("svg:path", { class: "previous", d: path(previous), "data-series": "previous" }) : null,
    h("svg:path", { class: "current", d: path(current), "data-series": "current" }),
    current.map((v, i) =>
      h(
        "svg:circle",
        { class: "point", cx: x(i), cy: y(v), r: n > 60 ? 1.5 : 3 },
        h("svg:title", {}, `${labels[i]}: ${format(v)}${previous ? ` (previous ${format(previous[i])})` : ""}`),
      ),
    ),
  );
  const legend = h(
    "div",
    { class: "legend", "aria-hidden": "true" },
    h("span", {}, h("span", { class: "swatch" }), seriesNames[0]),
    previous ? h("span", {}, h("span", { class: "swatch previous" }), seriesNames[1]) : null,
  );
  const table = h(
    "table",
    { class: "visually-hidden" },
    h("caption", {}, title),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Time"), seriesNames.map((s, i) => (i === 0 || previous) ? h("th", { scope: "col" }, s) : null))),
    h(
      "tbody",
      {},
      labels.map((label, i) =>
        h("tr", {}, h("th", { scope: "row" }, label), h("td", {}, format(current[i])), previous ? h("td", {}, format(previous[i])) : null),
      ),
    ),
  );
  return h("figure", { class: "line-chart" }, svg, legend, table);
}

// A donut of `rows` ([{label, value}]), the largest five and the rest as "Others".
export function donut(rows, title) {
  const sorted = [...rows].sort((a, b) => b.value - a.value);
  const shown = sorted.slice(0, 5);
  const rest = sorted.slice(5).reduce((sum, r) => sum + r.value, 0);
  if (rest > 0) shown.push({ label: "Others", value: rest });
  const total = shown.reduce((sum, r) => sum + r.value, 0);
  const R = 50;
  const r = 30;
  let angle = -Math.PI / 2;
  const point = (a, radius) => `${(60 + radius * Math.cos(a)).toFixed(2)},${(60 + radius * Math.sin(a)).toFixed(2)}`;
  const slices = shown.map((row, i) => {
    const share = total ? row.value / total : 0;
    // A whole circle cannot be one arc: just under it.
    const sweep = Math.min(share, 0.9999) * 2 * Math.PI;
    const start = angle;
    angle += sweep;
    const large = sweep > Math.PI ? 1 : 0;
    const d = `M${point(start, R)}A${R},${R} 0 ${large} 1 ${point(angle, R)}L${point(angle, r)}A${r},${r} 0 ${large} 0 ${point(start, r)}Z`;
    return h("svg:path", { class: `slice-${i + 1}`, d }, h("svg:title", {}, `${row.label}: ${Math.round(share * 1000) / 10}%`));
  });
  return {
    svg: h("svg:svg", { viewBox: "0 0 120 120", role: "img", "aria-label": title, class: "donut" }, slices),
    keys: shown.map((row, i) => ({ label: row.label, slice: `slice-${i + 1}` })),
  };
}
