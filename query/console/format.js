// Numbers as people read them: 1.2k, 3m 20s, 41.7%.

const whole = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

// 950 → "950", 1234 → "1.2k", 56789 → "57k", 1234567 → "1.2M".
export function compact(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const abs = Math.abs(n);
  const scaled = (d, unit) => {
    const x = n / d;
    return `${Math.abs(x) < 10 ? trim(x.toFixed(1)) : whole.format(x)}${unit}`;
  };
  if (abs >= 1e9) return scaled(1e9, "B");
  if (abs >= 1e6) return scaled(1e6, "M");
  if (abs >= 1e3) return scaled(1e3, "k");
  return Number.isInteger(n) ? whole.format(n) : trim(n.toFixed(abs < 10 ? 2 : 1));
}

function trim(text) {
  return text.includes(".") ? text.replace(/\.?0+$/, "") : text;
}

// Seconds as "45s", "3m 20s", "1h 5m".
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

// A percentage: 41.666 → "41.7%".
export function percent(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return `${trim(x.toFixed(1))}%`;
}

// A plain number with grouping, for tables: 12345 → "12,345".
export function full(n) {
  if (n === null || n === undefined) return "–";
  return Number.isInteger(n) ? whole.format(n) : trim(n.toFixed(2));
}

// An RFC 3339 instant in the browser's zone: "Dec 7, 16:02:11".
export function instant(text) {
  const t = new Date(text);
  if (Number.isNaN(t.getTime())) return text || "–";
  return t.toLocaleString("en-US", {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
}

// The formatter of a metric of /v1/query.
export function metricFormat(metric) {
  if (metric === "visit_duration" || metric === "time_on_page") return duration;
  if (metric === "bounce_rate" || metric === "percentage" || metric === "conversion_rate") return percent;
  return compact;
}

// The change against the previous period as a label and a direction: counts change in %,
// rates in points. `better` tells whether up is good (a bounce rate going up is not).
export function changeLabel(metric, change) {
  if (change === null || change === undefined) return { text: "no previous data", direction: "same" };
  const points = metric === "bounce_rate" || metric === "percentage" || metric === "conversion_rate";
  const unit = points ? " pts" : "%";
  const arrow = change > 0 ? "↑" : change < 0 ? "↓" : "→";
  const good = metric === "bounce_rate" ? change < 0 : change > 0;
  return {
    text: `${arrow} ${trim(Math.abs(change).toFixed(1))}${unit}`,
    direction: change === 0 ? "same" : good ? "up" : "down",
  };
}

// The names filters are shown with.
const DIMENSION_NAMES = {
  "event:page": "Page",
  "event:name": "Event",
  "event:goal": "Goal",
  "visit:entry_page": "Entry page",
  "visit:exit_page": "Exit page",
  "visit:source": "Source",
  "visit:referrer": "Referrer",
  "visit:channel": "Channel",
  "visit:utm_source": "UTM source",
  "visit:utm_medium": "UTM medium",
  "visit:utm_campaign": "UTM campaign",
  "visit:browser": "Browser",
  "visit:os": "OS",
  "visit:device": "Device",
};
export const dimensionName = (d) =>
  DIMENSION_NAMES[d] || (d.startsWith("event:props:") ? `Property ${d.slice(12)}` : d);
