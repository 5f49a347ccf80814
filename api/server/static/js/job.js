// One job: status, live curves, few-shot results, checkpoints, lineage, log tail, resolved spec, and actions.

import { api, download } from "./api.js";
import { watchJob } from "./events.js";
import { Board } from "./charts.js";
import { bytes, duration, h, jobDuration, localTime, number, percent, progressText, scrollHint, setText, significant, statusBadge } from "./format.js";
import { dumpYaml } from "./yaml.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled", "pruned"]);
const FIRST_LOAD_POINTS = 1000; // the server downsamples longer series to this budget
const LOG_LINES = 200; // of train.log shown, the newest

// How the trainer found the peak MFU divides by (vit.flops.PeakKind, logged as peak_kind).
const PEAK_KINDS = [
  "datasheet bf16 dense rate",
  "calibrated by the worker: fastest matmul, best its host has shown",
  "measured by the trainer: fastest of 12 matmuls",
  "the rate training reached (the measured peak read low)",
];

// "45.2% of 0.0961 TFLOP/s" and, under it, how that peak was found; model FLOPs / the peak (vit/flops.py).
function mfuReading(metrics) {
  if (metrics?.mfu == null) return "";
  if (metrics.peak_tflops == null) return percent(metrics.mfu);
  return h("span", { class: "mfu" }, `${percent(metrics.mfu)} of ${significant(metrics.peak_tflops, 3)} TFLOP/s`,
    h("small", { class: "muted peak-source" }, PEAK_KINDS[metrics.peak_kind] ?? "peak"));
}

// "2 of 3" while another attempt may follow; once finished, only the attempts made: a job that failed on its
// spec is never retried, whatever max_attempts says.
function attemptText(job) {
  if (!job.attempt) return "";
  return FINISHED.has(job.status) ? String(job.attempt) : `${job.attempt} of ${job.max_attempts}`;
}

export function mountJob(view, id) {
  const title = h("h1", {}, `Job ${id}`);
  const badgeHolder = h("span");
  const meta = h("span", { class: "muted" });
  const parentLink = h("a", { class: "parent-link", hidden: true });
  const cancel = h("button", { type: "button", class: "danger", hidden: true, onclick: onCancel }, "Cancel");
  const finetune = h("a", { class: "button primary", hidden: true, href: `#/submit?from_job=${id}` }, "Fine-tune from this");
  const copy = h("a", { class: "button", href: `#/submit?copy=${id}` }, "Edit as new");
  const fill = h("div", { class: "fill" });
  const progressLabel = h("span", { class: "bar-label" });
  const summary = h("dl", { class: "summary" });
  const errorBox = h("pre", { class: "error-box", hidden: true });
  const chartGrid = h("div");
  const noCharts = h("p", { class: "empty no-metrics", hidden: true });
  const fewShot = h("div");
  const checkpoints = h("div", { class: "table-scroll", "data-testid": "checkpoints" });
  const children = h("div");
  const childrenPanel = h("section", { class: "panel", hidden: true }, h("h2", {}, "Fine-tunes of this job"), children);
  const logs = h("pre", { class: "logs", "data-testid": "logs" }, "(no log yet)");
  const spec = h("pre", { class: "spec" });
  const tagsInput = h("input", { type: "text", name: "tags", class: "search", "aria-label": "tags",
    placeholder: "tags, separated by commas" });
  const notesInput = h("textarea", { name: "notes", class: "notes", rows: "3", "aria-label": "notes",
    placeholder: "Notes on this run (only you can change them)" });
  const notesStatus = h("span", { class: "muted", role: "status" });
  const notesForm = h("form", { class: "job-notes", onsubmit: saveNotes }, tagsInput, notesInput,
    h("div", { class: "toolbar" }, h("button", { type: "submit" }, "Save tags and notes"), notesStatus));

  view.append(
    h("div", { class: "job-head" },
      h("a", { href: "#/", class: "back" }, "← Jobs"),
      title, badgeHolder, meta, parentLink, h("span", { class: "spacer" }), copy, finetune, cancel),
    h("div", { class: "job-progress" }, h("div", { class: "bar wide" }, fill), progressLabel),
    errorBox,
    summary,
    noCharts,
    chartGrid,
    childrenPanel,
    h("div", { class: "columns" },
      h("section", { class: "panel" }, h("h2", {}, "Few-shot linear accuracy"), fewShot),
      h("section", { class: "panel" }, h("h2", {}, "Checkpoints"), checkpoints)),
    h("section", { class: "panel" }, h("h2", {}, "Tags and notes"), notesForm),
    h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", {}, "Log"), h("span", { class: "spacer" }),
        h("a", { href: `#/jobs/${id}/log`, class: "full-log" }, "Full log, search and download →")),
      logs),
    h("section", { class: "panel" }, h("h2", {}, "Resolved spec"), spec),
  );
  scrollHint(checkpoints); // on a phone the Created column scrolls: the hint says there is more
  const board = new Board(chartGrid, { fileName: `job${id}` });
  board.addRun({ id, name: `job ${id}`, batchSize: 0 });

  let job = null;
  let cursor = null;
  let lastCheckpointStep = null;
  let notesLoaded = false; // filled once (and after a save), so polling never overwrites what is being typed

  // PATCH /jobs/{id}: the owner's tags and notes; a 422 says which field is wrong.
  async function saveNotes(event) {
    event.preventDefault();
    const tags = tagsInput.value.split(",").map((t) => t.trim()).filter(Boolean);
    setText(notesStatus, "saving…");
    try {
      const saved = await api(`/jobs/${id}`, { method: "PATCH", body: JSON.stringify({ tags, notes: notesInput.value }),
        contentType: "application/json" });
      notesLoaded = false;
      render(saved);
      setText(notesStatus, "saved");
    } catch (err) {
      const detail = Array.isArray(err.detail) ? err.detail.map((d) => `${d.loc.slice(1).join(".")}: ${d.msg}`).join("; ") : err.message;
      setText(notesStatus, detail);
    }
  }

  async function onCancel() {
    if (!confirm(`Cancel job ${id} (${job?.name})? A running job saves a checkpoint and stops.`)) return;
    cancel.disabled = true;
    try {
      render(await api(`/jobs/${id}/cancel`, { method: "POST" }));
    } catch (err) {
      alert(err.message);
      cancel.disabled = false;
    }
  }

  function render(next) {
    job = next;
    setText(title, `#${job.id} ${job.name}`);
    badgeHolder.replaceChildren(statusBadge(job.status, job.cancel_requested));
    setText(meta, job.kind);
    parentLink.hidden = !job.parent_job_id;
    if (job.parent_job_id) {
      parentLink.href = `#/jobs/${job.parent_job_id}`;
      const checkpoint = job.spec.init?.checkpoint;
      setText(parentLink, `from job #${job.parent_job_id}${checkpoint ? ` (${checkpoint})` : ""}`);
    }
    Object.assign(board.runs[0], { name: job.name, batchSize: job.spec.train.batch_size });
    cancel.hidden = FINISHED.has(job.status) || job.cancel_requested;
    board.setEnded(FINISHED.has(job.status));
    fill.style.width = `${Math.round((job.progress || 0) * 100)}%`;
    setText(progressLabel, progressText(job));
    errorBox.hidden = !job.error;
    setText(errorBox, job.error || "");
    const rows = [
      ["Attempt", attemptText(job)],
      ["Worker", job.worker],
      // The attempt's nodes (a multi-node or Slurm job) and the Slurm job that runs it.
      ["Nodes", job.nodes?.length > 1 || job.executor_ref ? job.nodes.join(", ") : ""],
      ["Slurm job", job.executor_ref?.startsWith("slurm:") ? job.executor_ref.slice(6) : ""],
      ["Waiting", job.wait_reason],
      ["Place in queue", job.queue_position], // 1: runs next in its pool
      ["Resumed from step", job.resumed_from_step],
      ["Created", localTime(job.created_at)],
      ["Started", localTime(job.started_at)],
      ["Finished", localTime(job.finished_at)],
      ["Duration", jobDuration(job)],
      ["ETA", job.status === "running" ? duration(job.eta_seconds) : ""],
      ["Throughput", job.images_per_s == null ? "" : `${number(job.images_per_s, 3)} img/s`],
      ["MFU", mfuReading(job.latest_metrics)],
      ["Best val top-1", percent(job.best_val_top1)],
      ["Train loss", number(job.latest_metrics?.loss)],
    ];
    summary.replaceChildren(
      ...rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
        .map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v instanceof Node ? v : String(v)))),
    );
    renderFewShot();
    const text = dumpYaml(job.spec);
    if (spec.textContent !== text) spec.textContent = text;
    view.dataset.status = job.status;
    showChartsOrWhy();
    if (!notesLoaded) {
      tagsInput.value = (job.tags || []).join(", ");
      notesInput.value = job.notes || "";
      notesLoaded = true;
    }
  }

  // A job that never logged a point has no curves to draw: say why instead of showing empty charts (a running
  // one keeps them, its first points are coming).
  function showChartsOrWhy() {
    const hasPoints = board.runs[0].points.size > 0;
    const why = hasPoints || job.status === "running" ? null
      : job.status === "queued" ? "No metrics yet: the job is queued" + (job.wait_reason ? ` (${job.wait_reason})` : ".")
        : `No metrics: the job ${job.status} before its first logged step.`;
    chartGrid.hidden = why !== null;
    noCharts.hidden = why === null;
    setText(noCharts, why ?? "");
  }

  function renderFewShot() {
    const shots = job.spec?.eval?.few_shot || [];
    if (!shots.length) {
      fewShot.replaceChildren(h("p", { class: "muted" }, "Not configured (eval.few_shot)."));
      return;
    }
    const metrics = job.latest_metrics || {};
    fewShot.replaceChildren(h("table", { class: "small" },
      h("thead", {}, h("tr", {}, h("th", {}, "Shots per class"), h("th", { class: "num" }, "Accuracy"))),
      h("tbody", {}, shots.map((n) => h("tr", {}, h("td", {}, `${n}-shot`),
        h("td", { class: "num" }, percent(metrics[`few_shot_${n}`]) || "—"))))));
  }

  async function loadMetrics() {
    const query = cursor === null ? `max_points=${FIRST_LOAD_POINTS}` : `since=${cursor}`;
    const result = await api(`/jobs/${id}/metrics?${query}`);
    const replace = cursor === null;
    if (!board.setPoints(id, result.series, { replace })) { // a resumed attempt rewrote the history: load it whole again
      cursor = null;
      return loadMetrics();
    }
    // Redraw only for new points: a redraw resets the axes, which would undo a reader's zoom every poll.
    if (replace || Object.values(result.series).some((s) => s.steps.length)) board.render();
    if (job) showChartsOrWhy();
    if (result.cursor != null) cursor = result.cursor;
    else if (cursor === null) cursor = 0;
    view.dataset.metricsLoaded = "true";
  }

  // Any job that kept a checkpoint can be fine-tuned from, a cancelled or failed one included: the button
  // starts from the latest, each checkpoint's row from that one.
  async function loadCheckpoints() {
    if (lastCheckpointStep === job.step && !FINISHED.has(job.status)) return;
    lastCheckpointStep = job.step;
    const { items } = await api(`/jobs/${id}/checkpoints`);
    finetune.hidden = !items.length;
    const finetuneFrom = (c) => `#/submit?from_job=${id}&checkpoint=${encodeURIComponent(c.name)}`;
    checkpoints.replaceChildren(items.length
      ? h("table", { class: "small" },
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", { class: "num" }, "Step"),
          h("th", { class: "num" }, "Size"), h("th", {}), h("th", {}, "Created"))),
        h("tbody", {}, items.map((c) => h("tr", {},
          h("td", {}, h("code", {}, c.name)), h("td", { class: "num" }, String(c.step)),
          h("td", { class: "num" }, bytes(c.size_bytes)),
          h("td", { class: "actions" },
            h("a", { href: c.url, download: `job${id}-${c.name}.safetensors`, onclick: (e) => {
              e.preventDefault(); // through fetch, so that a token goes with it
              download(c.url, `job${id}-${c.name}.safetensors`).catch((err) => alert(err.message));
            } }, "download"),
            h("a", { href: finetuneFrom(c), "data-checkpoint": c.name }, "fine-tune")),
          h("td", {}, localTime(c.created_at))))))
      : h("p", { class: "muted" }, FINISHED.has(job.status) ? `None: the job ended (${job.status}) without keeping one.` : "None yet."));
  }

  async function loadChildren() {
    const { items, total } = await api(`/jobs?parent=${id}&limit=100`);
    childrenPanel.hidden = !items.length;
    children.replaceChildren(h("ul", { class: "children" }, items.map((child) => h("li", { "data-job-id": child.id },
      h("a", { href: `#/jobs/${child.id}` }, `#${child.id} ${child.name}`), " ", statusBadge(child.status, child.cancel_requested),
      child.best_val_top1 == null ? "" : h("span", { class: "muted" }, ` best val top-1 ${percent(child.best_val_top1)}`),
      child.spec.init?.checkpoint ? h("span", { class: "muted" }, ` from ${child.spec.init.checkpoint}`) : ""))),
    total > items.length ? h("p", { class: "muted" }, `and ${total - items.length} more`) : "");
  }

  async function loadLogs() {
    const text = (await api(`/jobs/${id}/logs?tail=${LOG_LINES}`)) || "(no log yet)";
    if (text === "(no log yet)") logs.dataset.empty = "true";
    else delete logs.dataset.empty;
    if (logs.textContent === text) return;
    const atBottom = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 24;
    logs.textContent = text;
    if (atBottom) logs.scrollTop = logs.scrollHeight; // follow unless the reader scrolled up
  }

  async function load() {
    // The first (downsampled, largest) metrics load runs alongside the job's own fetch.
    const [next] = await Promise.all([api(`/jobs/${id}`), loadMetrics()]);
    render(next);
    await Promise.all([loadCheckpoints(), loadLogs(), loadChildren()]);
  }

  // After the first load, the page is told about changes (one shared feed on the server) instead of polling.
  function onEvent(kind, data) {
    if (kind === "job" || kind === "end") {
      render(data);
      loadCheckpoints().catch(console.warn);
      if (kind === "end") loadChildren().catch(console.warn);
    } else if (kind === "metrics") {
      addMetrics(data);
    } else if (kind === "log") {
      appendLog(data, replaceLog);
      replaceLog = false;
    }
  }

  function addMetrics(result) {
    if (!board.setPoints(id, result.series, { replace: false })) { // a resumed attempt rewrote the history
      cursor = null;
      loadMetrics().catch(console.warn);
      return;
    }
    if (Object.values(result.series).some((s) => s.steps.length)) board.render();
    if (result.cursor != null) cursor = result.cursor;
  }

  function appendLog(text, replace) {
    const atBottom = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 24;
    const lines = (replace || logs.dataset.empty ? "" : logs.textContent) + text;
    logs.textContent = lines.split("\n").slice(-LOG_LINES - 1).join("\n");
    delete logs.dataset.empty;
    if (atBottom) logs.scrollTop = logs.scrollHeight; // follow unless the reader scrolled up
  }

  const stopped = new AbortController();
  let replaceLog = false; // the first log event of a (re)connection is the tail: it replaces what is shown
  async function follow() {
    while (!stopped.signal.aborted) {
      try {
        if (job === null) await load();
        if (FINISHED.has(job.status)) return; // a finished job cannot change any more
        replaceLog = true;
        await watchJob(id, { since: cursor ?? 0, log_tail: LOG_LINES }, onEvent, stopped.signal);
        return;
      } catch (err) {
        if (err.status === 404) {
          view.replaceChildren(h("p", { class: "empty" }, `Job ${id} not found.`));
          return;
        }
        if (stopped.signal.aborted) return;
        console.warn(err);
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
  }

  view.refreshMetrics = loadMetrics; // one incremental fetch on demand: bench/dashboard.py times it
  follow();
  return {
    destroy() {
      stopped.abort();
      board.destroy();
    },
  };
}
