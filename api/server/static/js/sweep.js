// Sweeps: #/sweeps lists them; #/sweeps/ID ranks a sweep's jobs by a chosen metric, reads it as a study (parallel
// coordinates, the metric against each field, which fields mattered: study.js), lists the pruned jobs apart, and
// offers Cancel and a comparison of every job. A grid or random sweep also plots the metric against one field,
// one line per combination of the other fields.

import { api } from "./api.js";
import { PALETTE } from "./charts.js";
import { h, localTime, percent, poll, scrollHint, setText, significant, statusBadge, tick } from "./format.js";
import { importancePanel, parallelCoordinates, scatterPanels, studyLegend } from "./study.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled", "pruned"]);
const RULES = { asha: "ASHA", median: "median", hyperband: "Hyperband" };

// A metric to rank by: how a job reads it, whether higher is better, and how it is written. A search's own
// metric comes first.
function metricChoices(jobs, sweep) {
  const shots = [...new Set(jobs.flatMap((j) => j.spec.eval?.few_shot || []))].sort((a, b) => a - b);
  const known = ["val_top1", "val_loss", "loss", ...shots.map((n) => `few_shot_${n}`)];
  const own = sweep.metric && !known.includes(sweep.metric)
    ? [{ key: sweep.metric, label: `final ${sweep.metric}`, read: (j) => j.latest_metrics?.[sweep.metric], higher: sweep.goal !== "minimize" }]
    : [];
  return [...own,
    { key: "best_val_top1", label: "best val top-1", read: (j) => j.best_val_top1, higher: true, percent: true },
    { key: "val_top1", label: "final val top-1", read: (j) => j.latest_metrics?.val_top1, higher: true, percent: true },
    ...shots.map((n) => ({ key: `few_shot_${n}`, label: `${n}-shot accuracy`, read: (j) => j.latest_metrics?.[`few_shot_${n}`], higher: true, percent: true })),
    { key: "val_loss", label: "final val loss", read: (j) => j.latest_metrics?.val_loss, higher: false },
    { key: "loss", label: "final train loss", read: (j) => j.latest_metrics?.loss, higher: false },
  ];
}

function show(metric, value) {
  if (value == null) return "—";
  return metric.percent ? `${(value * 100).toFixed(2)}%` : significant(value);
}

function showParam(value) {
  return value == null ? "—" : typeof value === "number" ? significant(value) : String(value);
}

export function mountSweepList(view) {
  const tbody = h("tbody");
  const empty = h("p", { class: "empty", hidden: true }, "No sweeps yet: POST /sweeps or `vitq sweep SPEC.yaml`.");
  view.append(h("div", { class: "toolbar" }, h("h1", {}, "Sweeps")),
    h("div", { class: "table-scroll" }, h("table", { class: "jobs sweeps" },
      h("thead", {}, h("tr", {}, ["#", "Name", "Kind", "Fields", "Jobs", "Status", "Best val top-1", "Created"].map((t) => h("th", {}, t)))),
      tbody)),
    empty);

  async function refresh() {
    const { items } = await api("/sweeps?limit=100");
    tbody.replaceChildren(...items.map((s) => h("tr", { "data-sweep-id": s.id },
      h("td", { class: "num muted", "data-label": "#" }, String(s.id)),
      h("td", { "data-label": "Name", "data-col": "name" }, h("a", { href: `#/sweeps/${s.id}` }, s.name)),
      h("td", { "data-label": "Kind" }, s.searching ? `${s.mode} search` : s.mode),
      h("td", { "data-label": "Fields" }, s.fields.join(", ")),
      h("td", { class: "num", "data-label": "Jobs" }, String(s.job_count)),
      h("td", { "data-label": "Status" }, Object.entries(s.status_counts).map(([status, n]) => `${n} ${status}`).join(", ")),
      h("td", { class: "num", "data-label": "Best val top-1" }, percent(s.best_val_top1)),
      h("td", { "data-label": "Created" }, localTime(s.created_at)))));
    empty.hidden = items.length > 0;
    view.dataset.loaded = "true";
  }

  const stop = poll(refresh, 3000);
  return { destroy: stop };
}

export function mountSweep(view, id) {
  const heading = h("h1", {}, `Sweep ${id}`);
  const counts = h("span", { class: "muted sweep-summary" });
  const compare = h("a", { class: "button" }, "Compare all");
  const cancel = h("button", { type: "button", class: "danger", hidden: true, onclick: onCancel }, "Cancel sweep");
  const metricSelect = h("select", { "aria-label": "metric", onchange: render });
  const fieldSelect = h("select", { "aria-label": "parameter", onchange: render });
  const plotHolder = h("div", { class: "plot" });
  const plotEmpty = h("div", { class: "chart-empty" }, "no finished job has this metric yet");
  const table = h("div", { class: "table-scroll" });
  const coords = h("div", { class: "coords-holder" });
  const scatters = h("div", {});
  const importance = h("div", { class: "importance" });
  const prunedTable = h("div", { class: "table-scroll" });
  const prunedPanel = h("section", { class: "panel", hidden: true }, h("h2", {}, "Stopped early (pruned)"), prunedTable);
  const plotSection = h("section", { class: "chart", "data-chart": "sweep" }, h("div", { class: "chart-head" }, h("h3", { class: "sweep-plot-title" })), plotHolder, plotEmpty);
  view.append(
    h("div", { class: "job-head" }, h("a", { href: "#/sweeps", class: "back" }, "← Sweeps"), heading, counts,
      h("span", { class: "spacer" }), compare, cancel),
    h("div", { class: "board-tools" }, h("label", {}, "rank by ", metricSelect), h("label", {}, "against ", fieldSelect)),
    h("section", { class: "panel study" }, h("h2", {}, "Every job's values and result"), studyLegend(), coords),
    h("section", { class: "panel" }, h("h2", {}, "Which fields mattered"), importance),
    plotSection,
    h("section", { class: "panel scatter-panel", hidden: true }, h("h2", {}, "The metric against each field"), scatters),
    h("section", { class: "panel" }, h("h2", {}, "Jobs, best first"), table),
    prunedPanel,
  );
  scrollHint(table);

  let sweep = null;
  let plot = null;
  let importanceKey = ""; // the metric and results the importance panel shows
  const resizer = new ResizeObserver(() => {
    plot?.setSize({ width: plotWidth(), height: 260 });
    if (sweep) renderStudy(fillChoices());
  });
  resizer.observe(plotHolder);
  resizer.observe(coords);

  function plotWidth() {
    return Math.max(plotHolder.clientWidth, 200);
  }

  async function onCancel() {
    if (!confirm(`Cancel every unfinished job of sweep ${id} (${sweep?.name})?`)) return;
    cancel.disabled = true;
    try {
      sweep = await api(`/sweeps/${id}/cancel`, { method: "POST" });
      render();
    } catch (err) {
      alert(err.message);
    } finally {
      cancel.disabled = false;
    }
  }

  function fillChoices() {
    const jobs = sweep.jobs.map((c) => c.job);
    const metrics = metricChoices(jobs, sweep);
    if (metricSelect.options.length !== metrics.length) {
      const chosen = metricSelect.value;
      metricSelect.replaceChildren(...metrics.map((m) => h("option", { value: m.key }, m.label)));
      metricSelect.value = metrics.some((m) => m.key === chosen) ? chosen : metrics[0].key;
    }
    if (fieldSelect.options.length !== sweep.fields.length) {
      fieldSelect.replaceChildren(...sweep.fields.map((f) => h("option", { value: f }, f)));
    }
    fieldSelect.parentElement.hidden = sweep.fields.length < 2 || sweep.searching;
    return metrics.find((m) => m.key === metricSelect.value);
  }

  function summary() {
    const states = Object.entries(sweep.status_counts).map(([s, n]) => `${n} ${s}`).join(", ");
    if (!sweep.searching) return `${sweep.mode} · ${sweep.job_count} jobs · ${states}`;
    const stop = sweep.spec.early_stop;
    return [`${sweep.mode} search`, `${sweep.metric} (${sweep.goal})`, `${sweep.job_count} of ${sweep.max_jobs} jobs`,
      `${sweep.parallel} at once`, stop ? `${RULES[stop.rule]} early stopping from step ${stop.min_steps}` : "no early stopping",
      states, sweep.ended ? "ended" : "asking"].join(" · ");
  }

  function render() {
    const metric = fillChoices();
    const field = fieldSelect.value || sweep.fields[0];
    setText(heading, `#${sweep.id} ${sweep.name}`);
    setText(counts, summary());
    compare.href = `#/compare?ids=${sweep.jobs.map((c) => c.job.id).join(",")}`;
    cancel.hidden = sweep.ended || (!sweep.searching && sweep.jobs.every((c) => FINISHED.has(c.job.status)));
    renderTable(metric);
    renderPruned(metric);
    renderStudy(metric);
    plotSection.hidden = sweep.searching;
    if (!sweep.searching) renderPlot(metric, field);
    view.dataset.loaded = "true";
  }

  function studyChildren(metric) {
    return sweep.jobs.map((c) => ({ id: c.job.id, name: c.job.name, status: c.job.status, params: c.params, value: metric.read(c.job) }));
  }

  function renderStudy(metric) {
    const children = studyChildren(metric);
    const width = Math.max(coords.clientWidth || view.clientWidth - 40, 300);
    coords.replaceChildren(parallelCoordinates({ children, fields: sweep.fields, metric, width,
      onPick: (id) => { location.hash = `#/jobs/${id}`; } }));
    scatters.closest("section").hidden = !sweep.searching;
    if (sweep.searching) scatters.replaceChildren(scatterPanels({ children, fields: sweep.fields, metric, width: width / 3 }));
    const done = sweep.jobs.filter((c) => c.job.status === "succeeded").length;
    const key = `${metric.key}:${done}`;
    if (key !== importanceKey) {
      importanceKey = key;
      api(`/sweeps/${id}/importance?metric=${encodeURIComponent(metric.key)}`)
        .then((result) => importance.replaceChildren(importancePanel(result)))
        .catch((err) => importance.replaceChildren(h("p", { class: "muted" }, err.message)));
    }
  }

  // Children the pruner stopped: where they stopped, and their last value (from fewer steps: not ranked).
  function renderPruned(metric) {
    const pruned = sweep.jobs.filter((c) => c.job.status === "pruned");
    prunedPanel.hidden = !pruned.length;
    prunedTable.replaceChildren(h("table", { class: "small pruned" },
      h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", { class: "num" }, "Stopped at step"),
        h("th", { class: "num" }, metric.label), sweep.fields.map((f) => h("th", { class: "num" }, h("code", {}, f))))),
      h("tbody", {}, pruned.map((c) => h("tr", { "data-job-id": c.job.id },
        h("td", {}, h("a", { href: `#/jobs/${c.job.id}` }, `#${c.job.id} ${c.job.name}`)),
        h("td", { class: "num" }, `${c.job.step} of ${c.job.total_steps}`),
        h("td", { class: "num" }, show(metric, metric.read(c.job))),
        sweep.fields.map((f) => h("td", { class: "num" }, showParam(c.params[f]))))))));
  }

  // Best first by the chosen metric; jobs without it yet at the end, in the order they were made. Pruned jobs
  // are listed apart.
  function renderTable(metric) {
    const ranked = sweep.jobs.filter((c) => c.job.status !== "pruned").map((c, order) => ({ ...c, order, value: metric.read(c.job) }))
      .sort((a, b) => {
        if ((a.value == null) !== (b.value == null)) return a.value == null ? 1 : -1;
        if (a.value == null) return a.order - b.order;
        return metric.higher ? b.value - a.value : a.value - b.value;
      });
    // The metric right after the job: on a phone it is what must show without scrolling.
    table.replaceChildren(h("table", { class: "small ranking" },
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Rank"), h("th", {}, "Job"),
        h("th", { class: "num" }, metric.label), h("th", {}, "Status"),
        sweep.fields.map((f) => h("th", { class: "num" }, h("code", {}, f))))),
      h("tbody", {}, ranked.map((c, i) => h("tr", { "data-job-id": c.job.id },
        h("td", { class: "num" }, c.value == null ? "" : String(i + 1)),
        h("td", { "data-col": "job" }, h("a", { href: `#/jobs/${c.job.id}` }, `#${c.job.id} ${c.job.name}`)),
        h("td", { class: "num", "data-col": "metric" }, show(metric, c.value)),
        h("td", {}, statusBadge(c.job.status, c.job.cancel_requested)),
        sweep.fields.map((f) => h("td", { class: "num" }, showParam(c.params[f]))))))));
  }

  // Metric against one swept field: x is the field's value (by rank when not a number), one line per
  // combination of the other fields' values.
  function renderPlot(metric, field) {
    view.querySelector(".sweep-plot-title").textContent = `${metric.label} against ${field}`;
    const others = sweep.fields.filter((f) => f !== field);
    const values = [...new Set(sweep.jobs.map((c) => c.params[field]))];
    const numeric = values.every((v) => typeof v === "number");
    const categories = numeric ? null : values.map(String).sort();
    const xOf = (v) => (numeric ? v : categories.indexOf(String(v)));
    const xs = [...new Set(sweep.jobs.map((c) => xOf(c.params[field])))].sort((a, b) => a - b);
    const groups = new Map();
    for (const c of sweep.jobs) {
      const key = others.map((f) => `${f}=${showParam(c.params[f])}`).join(" ") || metric.label;
      if (!groups.has(key)) groups.set(key, new Array(xs.length).fill(null));
      const y = metric.read(c.job);
      if (y != null) groups.get(key)[xs.indexOf(xOf(c.params[field]))] = y;
    }
    const hasPoints = [...groups.values()].some((ys) => ys.some((v) => v != null));
    plotEmpty.hidden = hasPoints;
    const logX = numeric && xs[0] > 0 && xs[xs.length - 1] / xs[0] >= 8; // learning rates, subsets: by ratio
    plot?.destroy();
    plot = new uPlot({
      width: plotWidth(),
      height: 260,
      scales: { x: { time: false, ...(logX ? { distr: 3, log: 10 } : {}) } },
      axes: [
        { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, label: field, ...(numeric ? {} : { splits: () => xs }),
          values: (u, splits) => splits.map((v) => (numeric ? significant(v, 3) : categories[v] ?? "")) },
        { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, size: 70,
          values: (u, splits, axis, space, increment) => splits.map((v) => (v == null ? "" : tick(v, increment, { asPercent: metric.percent }))) },
      ],
      series: [
        { label: field, value: (u, v) => (v == null ? "–" : numeric ? showParam(v) : categories[v]) },
        ...[...groups.keys()].map((key, i) => ({
          label: key, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true,
          points: { show: true, size: 8 }, value: (u, v) => show(metric, v),
        })),
      ],
    }, [xs, ...groups.values()], plotHolder);
  }

  async function refresh() {
    try {
      sweep = await api(`/sweeps/${id}`);
    } catch (err) {
      if (err.status !== 404) throw err;
      view.replaceChildren(h("p", { class: "empty" }, `Sweep ${id} not found.`));
      return false;
    }
    render();
    return sweep.searching ? !sweep.ended : !sweep.jobs.every((c) => FINISHED.has(c.job.status));
  }

  const stop = poll(refresh, 3000);
  return { destroy() { stop(); resizer.disconnect(); plot?.destroy(); } };
}
