// Metric panels drawn with uPlot, shared by the job page (one run) and the comparison (several runs overlaid).
// A Board holds each run's points and the view options (x axis, smoothing); a Panel draws some metrics of every
// run, with a log-scale toggle and PNG/CSV downloads. Cursors move together across a board's panels.

import { BYTE_INCREMENTS, bytes, bytesTick, compact, duration, h, significant, tick } from "./format.js";

export const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
  "#4b5563", "#ea580c"];
const DASHES = [[], [6, 4], [2, 3], [10, 3, 2, 3]]; // a run's second, third... metric in one panel
const LEGEND_STYLES = ["solid", "dashed", "dotted", "double"]; // each dash as its legend sample draws it
const HEIGHT = 220;
const AXIS_FONT = "11px system-ui, sans-serif";
const SPARSE = 40; // series with at most this many points get dots: eval series are few and far between
const SMOOTH_MIN = 10; // fewer points are never smoothed: an average of 4 evaluations drew val top-1 at 95 % next to a best of 99.4 %
const logRange = (u, lo, hi) => (lo == null ? [1, 10] : [lo / 1.05, hi * 1.05]);
const accuracyRange = (u, lo, hi) => [Math.max(0, (lo ?? 0) - 0.02), Math.min(1, (hi ?? 1) + 0.02)];

// Known metrics grouped into panels; any other logged series gets a panel of its own. `percent`: a fraction
// shown as a percentage; `bounded`: an accuracy, whose axis stays within [0, 1]. Core panels show even
// before their first point, so a new job's page does not reflow when training starts.
// `unit`: the y axis title.
export const PANELS = [
  { id: "loss", title: "Loss", unit: "cross-entropy", metrics: { loss: "train", val_loss: "val" }, core: true },
  { id: "val_top1", title: "Validation top-1", unit: "accuracy", metrics: { val_top1: "val top-1" }, percent: true, bounded: true, core: true },
  { id: "few_shot", title: "Few-shot accuracy", unit: "accuracy", pattern: /^few_shot_(\d+)$/, label: (m) => `${m[1]}-shot`, percent: true, bounded: true },
  { id: "lr", title: "Learning rate", unit: "learning rate", metrics: { lr: "lr" }, core: true },
  { id: "images_per_s", title: "Throughput (img/s)", unit: "images / s", metrics: { images_per_s: "img/s" }, core: true },
  { id: "grad_norm", title: "Gradient norm", unit: "L2 norm", metrics: { grad_norm: "grad norm" } },
  { id: "epoch", title: "Epoch", unit: "epochs", metrics: { epoch: "epoch" } },
  // Model FLOP utilization: a fraction of the accelerator's peak, when the trainer knows that peak.
  { id: "mfu", title: "MFU", unit: "of peak FLOP/s", metrics: { mfu: "MFU" }, percent: true },
  // What MFU is divided by and how it was found: read by the job summary, never drawn.
  { id: "peak", title: "Peak", metrics: { peak_tflops: "peak", peak_kind: "peak kind" }, hidden: true },
  // The worker's samples of the trainer's processes and devices (worker/usage.py): the "System" group.
  { id: "sys_cpu", title: "CPU", unit: "% of one core", metrics: { "sys/cpu_percent": "CPU, all processes" }, system: true },
  { id: "sys_memory", title: "Memory", unit: "bytes", pattern: /^sys\/(?:rss_bytes|gpu(\d+)_mem_bytes)$/,
    label: (m) => (m[1] == null ? "resident (RAM)" : `GPU ${m[1]}`), bytes: true, system: true },
  { id: "sys_gpu", title: "GPU utilisation", unit: "% of time busy", pattern: /^sys\/gpu(\d+)_util$/,
    label: (m) => `GPU ${m[1]}`, system: true },
];

// x axis choices: the logged step, the images trained on (step x global batch), or the training time summed
// from the logged throughput (evaluation and checkpoint pauses are not in it).
export const X_AXES = {
  step: { label: "step", axis: compact, value: (v) => String(Math.round(v)) },
  images: { label: "images seen", axis: compact, value: (v) => compact(v) },
  time: { label: "train time", axis: duration, value: duration },
};

let boards = 0;

const emptyText = (ended) => (ended ? "no points: the job ended before logging any" : "no points yet");

export class Board {
  constructor(container, { fileName = "vitq" } = {}) {
    this.runs = []; // {id, name, color, batchSize, points: Map(metric -> {steps, values})}
    this.x = "step";
    this.smoothing = 0;
    this.fileName = fileName;
    this.syncKey = `vitq-board-${++boards}`;
    this.panels = new Map(); // panel id -> Panel
    this.ended = false;
    const xSelect = h("select", { "aria-label": "x axis", onchange: (e) => this.setView({ x: e.target.value }) },
      Object.entries(X_AXES).map(([key, axis]) => h("option", { value: key }, axis.label)));
    const smoothingValue = h("output", {}, "0");
    const smoothing = h("input", {
      type: "range", min: "0", max: "0.99", step: "0.01", value: "0", "aria-label": "smoothing",
      oninput: (e) => {
        smoothingValue.textContent = e.target.value;
        this.setView({ smoothing: Number(e.target.value) });
      },
    });
    this.grid = h("div", { class: "charts" });
    this.systemGrid = h("div", { class: "charts" }); // the worker's samples, apart from what training logged
    this.system = h("section", { class: "system-charts", hidden: true, "aria-label": "System" },
      h("h2", {}, "System"), this.systemGrid);
    this.root = h("div", { class: "board" }, // "many-runs" (addRun): legends scroll instead of outgrowing charts
      h("div", { class: "board-tools" },
        h("label", {}, "x ", xSelect),
        h("label", { class: "smoothing" }, "smoothing ", smoothing, smoothingValue)),
      this.grid, this.system);
    container.append(this.root);
    for (const def of PANELS.filter((p) => p.core)) this.panel(def);
  }

  // The runs have ended (a finished job's page): an empty chart will stay empty, so "no points yet" is untrue.
  setEnded(ended) {
    if (ended === this.ended) return;
    this.ended = ended;
    for (const panel of this.panels.values()) panel.empty.textContent = emptyText(ended);
  }

  get multiRun() {
    return this.runs.length > 1;
  }

  addRun({ id, name, batchSize }) {
    const run = { id, name, batchSize, color: PALETTE[this.runs.length % PALETTE.length], points: new Map() };
    this.runs.push(run);
    this.root.classList.toggle("many-runs", this.runs.length > 1);
    return run;
  }

  // Replace (first load) or append (incremental) a run's points; `series` is the API's {name: {steps, values}}.
  // Returns false, changing nothing, when new points go back to steps already held: the job resumed from a
  // checkpoint and its history was written again, so the caller must reload the series whole. (System samples
  // are taken by the clock: several may share a step, so only an earlier step means a rewrite.)
  setPoints(runId, series, { replace = false } = {}) {
    const run = this.runs.find((r) => r.id === runId);
    const lastStep = (p) => (p && p.steps.length ? p.steps[p.steps.length - 1] : -Infinity);
    const rewinds = (name, s) => {
      const last = lastStep(run.points.get(name));
      return panelFor(name).system ? s.steps[0] < last : s.steps[0] <= last;
    };
    if (!replace && Object.entries(series).some(([name, s]) => s.steps.length && rewinds(name, s))) {
      return false;
    }
    if (replace) run.points.clear();
    for (const [name, incoming] of Object.entries(series)) {
      const target = run.points.get(name);
      if (target && !replace) {
        target.steps.push(...incoming.steps);
        target.values.push(...incoming.values);
      } else {
        run.points.set(name, { steps: incoming.steps.slice(), values: incoming.values.slice() });
      }
    }
    return true;
  }

  // Draw: a panel for every metric some run has, then every panel's data.
  render({ rebuild = false } = {}) {
    for (const run of this.runs) {
      for (const name of run.points.keys()) if (!panelFor(name).hidden) this.panel(panelFor(name));
    }
    for (const panel of this.panels.values()) panel.refresh({ rebuild });
  }

  setView(change) {
    const crossesZero = "smoothing" in change && (change.smoothing > 0) !== (this.smoothing > 0);
    Object.assign(this, change);
    this.render({ rebuild: "x" in change || crossesZero });
  }

  panel(def) {
    if (!this.panels.has(def.id)) this.panels.set(def.id, new Panel(this, def));
    if (def.system) this.system.hidden = false;
    return this.panels.get(def.id);
  }

  // A run's points of one metric as x/y arrays on the current x axis (points without an x are left out).
  xy(run, metric) {
    const { steps, values } = run.points.get(metric);
    if (this.x === "step") return { x: steps, y: values };
    if (this.x === "images") return { x: steps.map((s) => s * (run.batchSize || 0)), y: values };
    const clock = trainClock(run);
    if (!clock) return { x: [], y: [] };
    return { x: steps.map(clock), y: values };
  }

  destroy() {
    for (const panel of this.panels.values()) panel.destroy();
  }
}

const otherPanels = new Map(); // metric -> its own panel definition, made once (panels are matched by identity)

function panelFor(metric) {
  for (const def of PANELS) {
    if ((def.metrics && metric in def.metrics) || def.pattern?.test(metric)) return def;
  }
  if (!otherPanels.has(metric)) otherPanels.set(metric, { id: `metric:${metric}`, title: metric, metrics: { [metric]: metric } });
  return otherPanels.get(metric);
}

// step -> seconds of training, summed over the logged throughput (each images_per_s point covers the steps
// since the previous one), interpolated between logged steps.
function trainClock(run) {
  const ips = run.points.get("images_per_s");
  if (!ips || !ips.steps.length || !run.batchSize) return null;
  const steps = ips.steps;
  const times = [];
  let total = 0;
  let previous = 0;
  for (let i = 0; i < steps.length; i++) {
    total += ((steps[i] - previous) * run.batchSize) / Math.max(ips.values[i], 1e-9);
    times.push(total);
    previous = steps[i];
  }
  return (step) => {
    let lo = 0;
    let hi = steps.length;
    while (lo < hi) { // first logged step >= step
      const mid = (lo + hi) >> 1;
      if (steps[mid] < step) lo = mid + 1; else hi = mid;
    }
    const i = Math.min(lo, steps.length - 1);
    const before = i > 0 ? steps[i - 1] : 0;
    const start = i > 0 ? times[i - 1] : 0;
    const rate = (times[i] - start) / Math.max(steps[i] - before, 1); // seconds per step in that interval
    return start + (step - before) * rate;
  };
}

// Exponential moving average, debiased (as TensorBoard's smoothing): the first points are not pulled to 0.
export function ema(values, weight) {
  if (!weight) return values;
  const out = new Array(values.length);
  let last = 0;
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null) { out[i] = null; continue; }
    n++;
    last = last * weight + (1 - weight) * v;
    out[i] = last / (1 - weight ** n);
  }
  return out;
}

class Panel {
  constructor(board, def) {
    this.board = board;
    this.def = def;
    this.log = false;
    this.plot = null;
    this.signature = null;
    this.logButton = h("button", { type: "button", class: "mini", "aria-pressed": "false", title: "logarithmic y axis",
      onclick: () => this.toggleLog() }, "log");
    this.root = h("section", { class: "chart", "data-chart": def.title, "data-panel": def.id },
      h("div", { class: "chart-head" }, h("h3", {}, def.title), h("span", { class: "spacer" }), this.logButton,
        h("button", { type: "button", class: "mini", title: "download this chart as PNG", onclick: () => this.downloadPng() }, "PNG"),
        h("button", { type: "button", class: "mini", title: "download the raw points as CSV", onclick: () => this.downloadCsv() }, "CSV")));
    this.holder = h("div", { class: "plot" });
    this.empty = h("div", { class: "chart-empty" }, emptyText(board.ended));
    this.root.append(this.holder, this.empty);
    (def.system ? board.systemGrid : board.grid).append(this.root);
    this.resizer = new ResizeObserver(() => this.fit());
    this.resizer.observe(this.root);
  }

  toggleLog() {
    this.log = !this.log;
    this.logButton.setAttribute("aria-pressed", String(this.log));
    this.refresh({ rebuild: true });
  }

  // One line per (run, metric); with several runs a run keeps its colour and its metrics differ by dash.
  lines() {
    const { runs, multiRun } = this.board;
    const names = new Set();
    for (const run of runs) for (const name of run.points.keys()) if (panelFor(name) === this.def) names.add(name);
    const metrics = [...names].sort((a, b) => metricOrder(this.def, a) - metricOrder(this.def, b));
    const lines = [];
    for (const run of runs) {
      metrics.forEach((metric, i) => {
        if (!run.points.has(metric)) return;
        const metricLabel = this.def.metrics?.[metric] ?? this.def.label?.(metric.match(this.def.pattern)) ?? metric;
        if (multiRun) {
          const runLabel = `#${run.id} ${run.name}`;
          lines.push({ run, metric, color: run.color, dash: DASHES[i % DASHES.length],
            label: metrics.length > 1 ? `${runLabel} · ${metricLabel}` : runLabel });
        } else {
          lines.push({ run, metric, color: PALETTE[i % PALETTE.length], dash: [], label: metricLabel });
        }
      });
    }
    return lines;
  }

  // uPlot wants one shared, sorted x array: merge the lines' x values, null where a line has no point. Each
  // line gives two columns: its raw values (drawn faint when smoothing) and the smoothed ones.
  data(lines) {
    const columns = lines.map((line) => {
      const { x, y } = this.board.xy(line.run, line.metric);
      const values = this.log ? y.map((v) => (v > 0 ? v : null)) : y;
      return { x, raw: values, smooth: values.length >= SMOOTH_MIN ? ema(values, this.board.smoothing) : values };
    });
    const hasPoints = columns.some((c) => c.x.length);
    this.empty.hidden = hasPoints;
    if (columns.length === 1) return [columns[0].x, columns[0].raw, columns[0].smooth];
    const xs = [...new Set(columns.flatMap((c) => c.x))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const data = [xs];
    for (const c of columns) {
      const raw = new Array(xs.length).fill(null);
      const smooth = new Array(xs.length).fill(null);
      c.x.forEach((x, i) => { raw[index.get(x)] = c.raw[i]; smooth[index.get(x)] = c.smooth[i]; });
      data.push(raw, smooth);
    }
    return data;
  }

  refresh({ rebuild = false } = {}) {
    const lines = this.lines();
    const signature = `${this.board.x}|${lines.map((l) => `${l.run.id}:${l.metric}`).join(",")}`;
    const data = this.data(lines);
    if (rebuild || !this.plot || signature !== this.signature) {
      this.plot?.destroy();
      this.holder.replaceChildren();
      this.plot = new uPlot(this.options(lines), data, this.holder);
      // uPlot draws the axis titles on the canvas; the page says them too (tests, screen readers).
      this.root.dataset.axes = this.plot.axes.map((a) => a.label).join(" | ");
      this.currentLines = lines;
      this.hideRawFromLegend();
      this.signature = signature;
    } else {
      this.plot.setData(data);
    }
  }

  options(lines) {
    const { percent, bounded } = this.def;
    const xAxis = X_AXES[this.board.x];
    const smoothing = this.board.smoothing > 0;
    const reading = percent ? (v) => `${(v * 100).toFixed(2)}%` : this.def.bytes ? bytes : (v) => significant(v);
    const axisStyle = { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e5e7eb" } };
    // uPlot's own log range snaps to whole decades, which flattens a loss going from 2.3 to 2.1: fit the data.
    const y = this.log ? { distr: 3, log: 10, range: logRange } : bounded ? { range: accuracyRange } : {};
    return {
      width: this.width(),
      height: HEIGHT,
      scales: { x: { time: false }, y },
      legend: { live: true },
      cursor: { sync: { key: this.board.syncKey }, drag: { x: true, y: false } },
      axes: [
        { ...axisStyle, label: xAxis.label, labelSize: 18, labelFont: AXIS_FONT,
          values: (u, splits) => splits.map((v) => (v == null ? "" : xAxis.axis(v))) },
        {
          ...axisStyle,
          label: this.def.unit ?? this.def.title,
          labelSize: 18,
          labelFont: AXIS_FONT,
          size: 70,
          ...(this.def.bytes && !this.log ? { incrs: BYTE_INCREMENTS } : {}),
          values: (u, splits, axis, space, increment) => splits.map((v) => {
            if (v == null) return "";
            if (this.def.bytes) return this.log ? bytes(v) : bytesTick(v, increment);
            if (this.log) return percent ? `${significant(v * 100, 3)}%` : significant(v, 3);
            return tick(v, increment, { asPercent: percent });
          }),
        },
      ],
      series: [
        { label: xAxis.label, value: (u, v) => (v == null ? "–" : xAxis.value(v)) },
        ...lines.flatMap((line) => {
          const count = line.run.points.get(line.metric).steps.length;
          return [
            { label: `${line.label} (raw)`, stroke: `${line.color}59`, width: 1.25, spanGaps: true, show: smoothing && count >= SMOOTH_MIN,
              points: { show: false } },
            { label: line.label, stroke: line.color, dash: line.dash, width: 1.5, spanGaps: true,
              points: { show: count <= SPARSE, size: 5 }, value: (u, v) => (v == null ? "–" : reading(v)) },
          ];
        }),
      ],
      hooks: {
        // Hiding a line from its legend entry hides its faint raw curve too.
        setSeries: [(u, i, opts) => {
          if (i && i % 2 === 0 && opts && "show" in opts && this.board.smoothing > 0) u.setSeries(i - 1, { show: opts.show }, false);
        }],
      },
    };
  }

  // The raw curves stay out of the legend; each line's entry shows a sample of its stroke, dash included (uPlot
  // draws the same square for solid, dashed and dotted lines: train and val looked alike).
  hideRawFromLegend() {
    const entries = this.plot.root.querySelectorAll(".u-legend .u-series");
    entries.forEach((el, i) => {
      if (i % 2 === 1) el.hidden = true;
      else if (i > 0) {
        const line = this.currentLines[i / 2 - 1];
        const marker = el.querySelector(".u-marker");
        marker.classList.add("line-sample");
        marker.dataset.dash = LEGEND_STYLES[DASHES.indexOf(line.dash)] ?? "solid";
        marker.style.borderTop = `3px ${marker.dataset.dash} ${line.color}`;
      }
    });
  }

  width() {
    return Math.max(this.root.clientWidth - 16, 200);
  }

  fit() {
    const width = this.width();
    if (this.plot && Math.abs(width - this.plot.width) > 1) this.plot.setSize({ width, height: HEIGHT });
  }

  fileBase() {
    return `${this.board.fileName}-${this.def.id.replace(/\W+/g, "_")}`;
  }

  // The plot canvas (axes included) under the title, with a legend of the visible lines drawn below it.
  downloadPng() {
    const source = this.plot.ctx.canvas;
    const ratio = source.width / this.plot.width;
    const visible = this.currentLines.filter((line, i) => this.plot.series[2 * i + 2].show);
    const legendRows = visible.length;
    const out = document.createElement("canvas");
    out.width = source.width;
    out.height = source.height + (28 + legendRows * 18 + 8) * ratio;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.scale(ratio, ratio);
    ctx.fillStyle = "#1f2937";
    ctx.font = "600 14px sans-serif";
    ctx.fillText(`${this.def.title} (x: ${X_AXES[this.board.x].label})`, 8, 18);
    ctx.drawImage(source, 0, 28, this.plot.width, source.height / ratio);
    ctx.font = "12px sans-serif";
    visible.forEach((line, row) => {
      const top = 28 + source.height / ratio + 6 + row * 18;
      ctx.strokeStyle = line.color;
      ctx.lineWidth = 2;
      ctx.setLineDash(line.dash);
      ctx.beginPath();
      ctx.moveTo(8, top + 6);
      ctx.lineTo(26, top + 6);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = "#1f2937";
      ctx.fillText(line.label, 30, top + 10);
    });
    out.toBlob((blob) => save(blob, `${this.fileBase()}.png`), "image/png");
  }

  // Every raw point (never the smoothed ones), one row each, with the step and the x value shown.
  downloadCsv() {
    const xLabel = X_AXES[this.board.x].label.replace(/ /g, "_");
    const rows = [["job_id", "job_name", "metric", "step", ...(this.board.x === "step" ? [] : [xLabel]), "value"]];
    for (const line of this.currentLines) {
      const { steps, values } = line.run.points.get(line.metric);
      const { x } = this.board.xy(line.run, line.metric);
      steps.forEach((step, i) => {
        rows.push([line.run.id, line.run.name, line.metric, step, ...(this.board.x === "step" ? [] : [x[i] ?? ""]), values[i]]);
      });
    }
    const text = rows.map((row) => row.map(csvCell).join(",")).join("\n") + "\n";
    save(new Blob([text], { type: "text/csv" }), `${this.fileBase()}.csv`);
  }

  destroy() {
    this.resizer.disconnect();
    this.plot?.destroy();
  }
}

function metricOrder(def, name) {
  if (def.metrics) return Object.keys(def.metrics).indexOf(name);
  const match = def.pattern && name.match(def.pattern);
  return match ? Number(match[1] ?? -1) : 0; // an unnumbered series (resident memory) before the GPUs
}

function csvCell(value) {
  const text = String(value);
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function save(blob, fileName) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: fileName, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
