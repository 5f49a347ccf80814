// The comparison of ticked jobs, #/compare?ids=3,5,9 (the URL is the selection, so it can be shared): every chart
// overlays the jobs, one colour each, and a table shows the spec fields that differ next to each job's outcome.

import { api } from "./api.js";
import { Board } from "./charts.js";
import { h, percent, poll, scrollHint, setText, statusBadge, subsetText } from "./format.js";

const MAX_JOBS = 20;
const POINTS_PER_SERIES = 1500; // the server downsamples each series to this budget: 10 jobs stay fast
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const CONCURRENT_LOADS = 3;

// How a field reads where the spec holds null (a default the trainer fills in), as the job list says it.
const NULL_READS = { "data.root": "built in", "init": "none (from scratch)" };

// The spec as dotted paths to readable values: {"model.variant": "Ti/4", "eval.few_shot": "[1,5]", ...}.
export function flatten(value, prefix = "", out = {}) {
  for (const [key, item] of Object.entries(value ?? {})) {
    const path = prefix ? `${prefix}.${key}` : key;
    if (path === "data.subset") out[path] = subsetText(value);
    else if (item !== null && typeof item === "object" && !Array.isArray(item)) flatten(item, path, out);
    else if (item === null) out[path] = NULL_READS[path] ?? "default";
    else out[path] = Array.isArray(item) ? JSON.stringify(item) : String(item);
  }
  return out;
}

// The paths whose value is not the same in every spec (a path one spec lacks counts as differing).
export function differingFields(specs) {
  const flat = specs.map((spec) => flatten(spec));
  const paths = [...new Set(flat.flatMap((f) => Object.keys(f)))];
  return paths.filter((path) => new Set(flat.map((f) => f[path] ?? "—")).size > 1)
    .map((path) => ({ path, values: flat.map((f) => f[path] ?? "—") }));
}

export function mountCompare(view, params) {
  const ids = [...new Set((params.get("ids") || "").split(",").map(Number))]
    .filter((id) => Number.isInteger(id) && id > 0).slice(0, MAX_JOBS);
  const heading = h("h1", {}, `Compare ${ids.length} jobs`);
  const notice = h("p", { class: "muted", hidden: true });
  const table = h("div", { class: "table-scroll compare-table" });
  const chartHolder = h("div");
  view.append(
    h("div", { class: "job-head" }, h("a", { href: "#/", class: "back" }, "← Jobs"), heading),
    notice, table, chartHolder);
  scrollHint(table);
  if (!ids.length) {
    notice.hidden = false;
    setText(notice, "No jobs chosen: tick jobs in the list and press Compare.");
    return { destroy() {} };
  }

  const board = new Board(chartHolder, { fileName: `compare-${ids.join("_")}` });
  const runs = new Map(); // id -> {job, cursor}

  function renderTable() {
    const present = ids.filter((id) => runs.get(id)?.job);
    const jobs = present.map((id) => runs.get(id).job);
    const missing = ids.filter((id) => runs.get(id)?.missing);
    notice.hidden = !missing.length;
    setText(notice, missing.length ? `Not found: ${missing.map((id) => `#${id}`).join(", ")}.` : "");
    const color = (job) => board.runs.find((r) => r.id === job.id)?.color;
    const shots = [...new Set(jobs.flatMap((j) => j.spec.eval?.few_shot || []))].sort((a, b) => a - b);
    const outcome = [
      ["status", (j) => statusBadge(j.status, j.cancel_requested)],
      ["progress", (j) => `${j.step}/${j.total_steps}`],
      ["best val top-1", (j) => percent(j.best_val_top1) || "—"],
      ...shots.map((n) => [`${n}-shot`, (j) => percent(j.latest_metrics?.[`few_shot_${n}`]) || "—"]),
    ];
    const differing = differingFields(jobs.map((j) => j.spec)).filter((d) => d.path !== "name");
    table.replaceChildren(h("table", { class: "small diff" },
      h("thead", {}, h("tr", {}, h("th", {}, "field"), jobs.map((j) => h("th", { "data-job-id": j.id },
        h("span", { class: "swatch", style: `background:${color(j)}` }),
        h("a", { href: `#/jobs/${j.id}` }, `#${j.id} ${j.name}`))))),
      h("tbody", {},
        outcome.map(([label, cell]) => h("tr", { class: "outcome" }, h("th", {}, label),
          jobs.map((j) => h("td", {}, cell(j))))),
        differing.length
          ? differing.map((d) => h("tr", { "data-field": d.path }, h("th", {}, h("code", {}, d.path)),
            d.values.map((v) => h("td", {}, v))))
          : h("tr", {}, h("td", { colspan: jobs.length + 1, class: "muted" }, "The specs are the same apart from their names.")))));
  }

  async function load(id) {
    const run = runs.get(id) || { job: null, cursor: null };
    runs.set(id, run);
    if (run.missing || (run.job && FINISHED.has(run.job.status) && run.cursor !== null)) return false;
    try {
      run.job = await api(`/jobs/${id}`);
    } catch (err) {
      if (err.status !== 404) throw err;
      run.missing = true;
      return false;
    }
    const boardRun = board.runs.find((r) => r.id === id);
    Object.assign(boardRun, { name: run.job.name, batchSize: run.job.spec.train.batch_size });
    const query = run.cursor === null ? `max_points=${POINTS_PER_SERIES}` : `since=${run.cursor}`;
    const result = await api(`/jobs/${id}/metrics?${query}`);
    const replace = run.cursor === null;
    if (!board.setPoints(id, result.series, { replace })) {
      run.cursor = null; // a resumed attempt rewrote the history: reload it whole next time
      return false;
    }
    run.cursor = result.cursor ?? 0;
    return replace || Object.values(result.series).some((s) => s.steps.length); // new points: redraw
  }

  for (const id of ids) board.addRun({ id, name: `#${id}`, batchSize: 0 });

  // A few jobs at a time: ten whole-series downsamplings at once queue up on the server (which answers 503 to
  // a request it cannot start within seconds), and the charts fill in as each group arrives. A job whose
  // fetch failed is tried again at the next tick; the others are drawn meanwhile.
  async function tick() {
    for (let i = 0; i < ids.length; i += CONCURRENT_LOADS) {
      const results = await Promise.allSettled(ids.slice(i, i + CONCURRENT_LOADS).map(load));
      for (const result of results) if (result.status === "rejected") console.warn(result.reason);
      renderTable();
      // Only with new points: a redraw resets the axes, undoing a reader's zoom.
      if (results.some((r) => r.value)) board.render();
    }
    const settled = ids.every((id) => runs.get(id).missing || runs.get(id).cursor !== null);
    if (settled) view.dataset.loaded = "true";
    return !settled || ids.some((id) => runs.get(id).job && !FINISHED.has(runs.get(id).job.status)); // until all have finished
  }

  const stop = poll(tick, 3000);
  return { destroy() { stop(); board.destroy(); } };
}
