// Metric curves with uPlot. A chart holds the points of its series by name; the job page loads each series
// once downsampled by the server and then appends only new points (the metrics `since` cursor).

const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed"];

export class MetricChart {
  // series: [{name: "loss", label: "train loss"}, ...]
  constructor(container, title, series, { format = (v) => v, range = null } = {}) {
    this.series = series.map((s, i) => ({ ...s, color: s.color || PALETTE[i % PALETTE.length] }));
    this.points = new Map(this.series.map((s) => [s.name, { steps: [], values: [] }]));
    this.root = document.createElement("section");
    this.root.className = "chart";
    this.root.dataset.chart = title;
    const heading = document.createElement("h3");
    heading.textContent = title;
    this.empty = document.createElement("div");
    this.empty.className = "chart-empty";
    this.empty.textContent = "no points yet";
    this.plotHolder = document.createElement("div");
    this.root.append(heading, this.plotHolder, this.empty);
    container.append(this.root);
    this.plot = new uPlot(this.options(format, range), this.data(), this.plotHolder);
    this.resizer = new ResizeObserver(() => this.fit());
    this.resizer.observe(this.root);
  }

  options(format, range) {
    return {
      width: Math.max(this.root.clientWidth - 16, 200),
      height: 190,
      scales: { x: { time: false }, y: range ? { range } : {} },
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      axes: [
        { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e5e7eb" } },
        {
          stroke: "#6b7280",
          grid: { stroke: "#eef0f3" },
          ticks: { stroke: "#e5e7eb" },
          size: 64,
          values: (u, vals) => vals.map((v) => (v == null ? "" : format(v))),
        },
      ],
      series: [
        { label: "step" },
        ...this.series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 1.5,
          spanGaps: true,
          // Dots only where a line alone would hide the data: eval series have few, sparse points.
          points: { show: (u, i) => u.data[i].filter((v) => v != null).length <= 40, size: 5 },
          value: (u, v) => (v == null ? "–" : format(v)),
        })),
      ],
    };
  }

  fit() {
    const width = Math.max(this.root.clientWidth - 16, 200);
    if (Math.abs(width - this.plot.width) > 1) this.plot.setSize({ width, height: 190 });
  }

  // Replace (first load) or append (incremental) points; `series` is the API's {name: {steps, values}}.
  // Returns false, changing nothing, when new points go back to steps already drawn: the job resumed from a
  // checkpoint and its history was written again, so the caller must reload the series whole.
  update(series, { replace = false } = {}) {
    const lastStep = (target) => (target.steps.length ? target.steps[target.steps.length - 1] : -Infinity);
    if (!replace && [...this.points].some(([name, target]) => series[name]?.steps.length
      && series[name].steps[0] <= lastStep(target))) return false;
    let changed = false;
    for (const [name, target] of this.points) {
      const incoming = series[name];
      if (replace) {
        target.steps = incoming ? incoming.steps.slice() : [];
        target.values = incoming ? incoming.values.slice() : [];
        changed = true;
      } else if (incoming && incoming.steps.length) {
        target.steps.push(...incoming.steps);
        target.values.push(...incoming.values);
        changed = true;
      }
    }
    if (changed) this.plot.setData(this.data());
    return true;
  }

  // uPlot wants one shared x array: merge the series' steps, null where a series has no point.
  data() {
    const lists = [...this.points.values()];
    const hasPoints = lists.some((p) => p.steps.length);
    if (this.empty) this.empty.hidden = hasPoints;
    if (lists.length === 1) return [lists[0].steps, lists[0].values];
    const steps = [...new Set(lists.flatMap((p) => p.steps))].sort((a, b) => a - b);
    const index = new Map(steps.map((s, i) => [s, i]));
    const columns = lists.map((p) => {
      const column = new Array(steps.length).fill(null);
      p.steps.forEach((s, i) => { column[index.get(s)] = p.values[i]; });
      return column;
    });
    return [steps, ...columns];
  }

  destroy() {
    this.resizer.disconnect();
    this.plot.destroy();
  }
}
