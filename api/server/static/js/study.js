// A sweep read as a study: parallel coordinates of every child's swept values and result, the result against
// each field, and which fields mattered (GET /sweeps/ID/importance). Plain SVG: 30 children draw in a few ms.

import { h, significant } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const LOG_RATIO = 8; // numbers spanning this factor or more (learning rates, subsets) get a log axis

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) if (value != null && value !== false) el.setAttribute(key, value);
  for (const child of children.flat()) if (child != null && child !== false) el.append(child);
  return el;
}

const keyOf = (v) => (typeof v === "string" ? v : JSON.stringify(v));
export const showValue = (v) => (v == null ? "—" : typeof v === "number" ? significant(v) : keyOf(v));

// The metric as the ranking table writes it: an accuracy in percent (29.1%, not 0.291 beside the table's 29.05%).
const metricText = (metric, v) => (v == null ? "—" : metric.percent ? `${significant(v * 100, 3)}%` : significant(v, 3));

// Where a value sits on its axis, 0 (bottom) to 1 (top): numbers on a linear or log scale, anything else as
// evenly spaced categories. `higher` false turns a number axis over (a loss: the best at the top).
export function axisOf(values, { higher = true, label = (v) => significant(v, 3) } = {}) {
  const present = values.filter((v) => v != null);
  if (present.length && present.every((v) => typeof v === "number")) {
    const lo = Math.min(...present);
    const hi = Math.max(...present);
    const log = lo > 0 && hi / lo >= LOG_RATIO;
    const f = log ? Math.log10 : (x) => x;
    const span = f(hi) - f(lo);
    const at = (v) => (span === 0 ? 0.5 : (f(v) - f(lo)) / span);
    const pos = (v) => (v == null ? null : higher ? at(v) : 1 - at(v));
    return { numeric: true, log, pos, ticks: [...new Set([lo, hi])].map((v) => ({ v, at: pos(v), label: label(v) })) };
  }
  const cats = [...new Set(present.map(keyOf))].sort();
  const pos = (v) => (v == null ? null : cats.length === 1 ? 0.5 : cats.indexOf(keyOf(v)) / (cats.length - 1));
  return { numeric: false, log: false, pos, ticks: cats.map((c) => ({ v: c, at: pos(c), label: c.length > 14 ? `${c.slice(0, 13)}…` : c })) };
}

// Better results darker: a child's colour from its rank by the metric (0 worst .. 1 best).
function shade(rank) {
  const light = [191, 219, 254];
  const dark = [30, 64, 175];
  const mix = light.map((l, i) => Math.round(l + (dark[i] - l) * rank));
  return `rgb(${mix.join(",")})`;
}

function kindOf(status) {
  if (status === "pruned") return "pruned";
  if (status === "succeeded") return "done";
  return ["failed", "cancelled"].includes(status) ? "stopped" : "open";
}

// children: [{id, name, status, params: {field: value}, value}] ; metric: {label, higher}
export function parallelCoordinates({ children, fields, metric, width, onPick }) {
  const height = 260;
  const margin = { left: 40, right: 60, top: 24, bottom: 30 };
  const columns = [...fields, metric.label];
  const axes = [...fields.map((f) => axisOf(children.map((c) => c.params[f]))), axisOf(children.map((c) => c.value), { higher: metric.higher, label: (v) => metricText(metric, v) })];
  const x = (i) => margin.left + (columns.length === 1 ? 0 : (i * (width - margin.left - margin.right)) / (columns.length - 1));
  const y = (at) => margin.top + (1 - at) * (height - margin.top - margin.bottom);
  const ranked = children.filter((c) => c.value != null && c.status === "succeeded").map((c) => c.value).sort((a, b) => (metric.higher ? a - b : b - a));
  const rankOf = (v) => (ranked.length < 2 ? 1 : ranked.indexOf(v) / (ranked.length - 1));

  const axisEls = columns.map((name, i) => s("g", { class: "axis", transform: `translate(${x(i)},0)` },
    s("line", { y1: y(1), y2: y(0), stroke: "#9ca3af" }),
    s("text", { class: "axis-title", y: margin.top - 10, "text-anchor": "middle" }, name),
    axes[i].ticks.map((t) => s("text", { class: "tick", x: 5, y: y(t.at) + 4 }, t.label)),
    axes[i].log ? s("text", { class: "tick muted", y: height - 8, "text-anchor": "middle" }, "log") : null));

  // Pruned and unfinished children first, so that the finished ones draw on top.
  const order = ["pruned", "stopped", "open", "done"];
  const lines = [...children].sort((a, b) => order.indexOf(kindOf(a.status)) - order.indexOf(kindOf(b.status))).map((c) => {
    const points = columns.map((_, i) => (i < fields.length ? axes[i].pos(c.params[fields[i]]) : axes[i].pos(c.value)));
    let d = "";
    points.forEach((at, i) => { if (at != null) d += `${d ? "L" : "M"}${x(i).toFixed(1)},${y(at).toFixed(1)}`; });
    const kind = kindOf(c.status);
    const stroke = kind === "done" && c.value != null ? shade(rankOf(c.value)) : kind === "pruned" ? "#9ca3af" : "#d1d5db";
    const title = `#${c.id} ${c.name} · ${c.status} · ${metric.label} ${metricText(metric, c.value)}`;
    return s("path", { class: `trial ${kind === "pruned" ? "pruned" : kind}`, d, stroke, "data-job-id": c.id }, s("title", {}, title));
  });
  const svg = s("svg", { class: "parallel-coords", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `parallel coordinates of ${children.length} jobs` }, lines, axisEls);
  svg.addEventListener("click", (event) => {
    const id = event.target.closest?.("path.trial")?.dataset.jobId;
    if (id && onPick) onPick(Number(id));
  });
  return svg;
}

export function studyLegend() {
  const item = (cls, text) => h("span", { class: "legend-item" },
    s("svg", { width: 28, height: 10 }, s("line", { class: `trial ${cls}`, x1: 0, y1: 5, x2: 28, y2: 5 })), text);
  return h("div", { class: "study-legend muted" }, item("done", "ran to the end (darker: better)"),
    item("pruned", "stopped early (pruned)"), item("open", "queued, running, failed or cancelled"));
}

// The metric against one field: a small scatter per field, pruned children hollow.
export function scatterPanels({ children, fields, metric, width }) {
  const size = { w: Math.max(Math.min(width, 300), 180), h: 170 };
  const margin = { left: 52, right: 10, top: 8, bottom: 34 };
  const yAxis = axisOf(children.map((c) => c.value), { higher: true, label: (v) => metricText(metric, v) });
  const y = (at) => margin.top + (1 - at) * (size.h - margin.top - margin.bottom);
  return h("div", { class: "scatters" }, fields.map((field) => {
    const xAxis = axisOf(children.map((c) => c.params[field]));
    const x = (at) => margin.left + at * (size.w - margin.left - margin.right);
    const dots = children.filter((c) => c.value != null && c.params[field] != null).map((c) => s("circle", {
      class: `trial ${kindOf(c.status) === "pruned" ? "pruned" : kindOf(c.status)}`, cx: x(xAxis.pos(c.params[field])).toFixed(1),
      cy: y(yAxis.pos(c.value)).toFixed(1), r: 4 }, s("title", {}, `#${c.id} ${field} ${showValue(c.params[field])} · ${metric.label} ${metricText(metric, c.value)}`)));
    return s("svg", { class: "scatter", width: size.w, height: size.h, "data-field": field },
      s("line", { x1: margin.left, x2: size.w - margin.right, y1: y(0), y2: y(0), stroke: "#9ca3af" }),
      s("line", { x1: margin.left, x2: margin.left, y1: y(0), y2: y(1), stroke: "#9ca3af" }),
      xAxis.ticks.map((t) => s("text", { class: "tick", x: x(t.at), y: size.h - 18, "text-anchor": "middle" }, t.label)),
      yAxis.ticks.map((t) => s("text", { class: "tick", x: margin.left - 4, y: y(t.at) + 4, "text-anchor": "end" }, t.label)),
      s("text", { class: "axis-title", x: (margin.left + size.w) / 2, y: size.h - 3, "text-anchor": "middle" }, field + (xAxis.log ? " (log)" : "")),
      dots);
  }));
}

// GET /sweeps/ID/importance's answer as bars.
export function importancePanel(result) {
  if (!result.items.length) {
    return h("p", { class: "muted" }, `Needs ${result.jobs < 3 ? "3 jobs that ran to the end with" : "results that differ in"} `
      + `${result.metric} (${result.jobs} so far).`);
  }
  return h("div", {},
    h("table", { class: "small importance-bars" }, h("tbody", {}, result.items.map((item) => h("tr", { "data-field": item.field },
      h("td", {}, h("code", {}, item.field)),
      h("td", { class: "bar-cell" }, h("span", { class: "bar", style: `width:${(item.importance * 100).toFixed(1)}%` })),
      h("td", { class: "num" }, `${(item.importance * 100).toFixed(0)}%`))))),
    h("p", { class: "muted help" }, `${result.method}; ${result.jobs} jobs, ${result.metric}.`));
}
