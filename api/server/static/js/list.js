// The job list: filters, name search, pagination, hyper-parameter columns, sorting, and tick boxes that open a
// comparison; grouped by sweep or by lineage (a pretrain above the fine-tunes that start from it, recursively),
// and narrowed to one whole sweep or lineage (GET /jobs?sweep_id= / lineage_of=). Refreshed every 2 s: rows are keyed by job id and only the cells whose text changed are touched,
// so polling never rebuilds the table. Under 760 px wide the rows are laid out as cards (app.css).

import { api } from "./api.js";
import { h, jobDuration, localTime, number, percent, poll, progressText, relativeTime, scrollHint, setText, significant, subsetText } from "./format.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "pruned"];
const PAGE_SIZE = 50;
const SELECTION_KEY = "vitq-selected-jobs"; // the ticked jobs survive paging, filtering and reloads
const GROUPINGS = { "": "none", sweep: "sweep", lineage: "lineage" };

// key, header, how a job reads in the cell (text) and sorts (sort; default: the text). `num`: right-aligned.
const COLUMNS = [
  { key: "select", label: "", special: true },
  { key: "id", label: "#", num: true, text: (j) => String(j.id), sort: (j) => j.id },
  { key: "name", label: "Name", special: true, text: (j) => j.name, sort: (j) => j.name.toLowerCase() },
  { key: "kind", label: "Kind", text: (j) => j.kind },
  { key: "status", label: "Status", special: true, text: displayStatus },
  { key: "progress", label: "Progress", special: true, text: listProgress, sort: (j) => j.progress },
  { key: "variant", label: "Variant", text: (j) => j.spec.model.variant },
  { key: "image", label: "Image", num: true, text: (j) => `${j.spec.model.image_size}px`, sort: (j) => j.spec.model.image_size },
  { key: "lr", label: "LR", num: true, text: (j) => significant(j.spec.optim.lr, 3), sort: (j) => j.spec.optim.lr },
  { key: "batch", label: "Batch", num: true, text: (j) => String(j.spec.train.batch_size), sort: (j) => j.spec.train.batch_size },
  { key: "steps", label: "Steps", num: true, text: (j) => String(j.spec.train.steps), sort: (j) => j.spec.train.steps },
  { key: "dataset", label: "Dataset", text: (j) => j.spec.data.dataset },
  { key: "subset", label: "Subset", num: true, text: (j) => subsetText(j.spec.data), sort: (j) => j.spec.data.subset ?? Infinity },
  { key: "val", label: "Best val top-1", num: true, text: (j) => percent(j.best_val_top1), sort: (j) => j.best_val_top1 },
  { key: "fewshot", label: "Few-shot", num: true, text: (j) => fewShot(j)?.text ?? "", sort: (j) => fewShot(j)?.value },
  { key: "throughput", label: "img/s", num: true, text: (j) => (j.images_per_s == null ? "" : number(j.images_per_s, 3)), sort: (j) => j.images_per_s },
  { key: "created", label: "Created", special: true, text: (j) => relativeTime(j.created_at), sort: (j) => Date.parse(j.created_at) },
  { key: "duration", label: "Duration", num: true, text: jobDuration, sort: (j) => (j.started_at ? (j.finished_at ? Date.parse(j.finished_at) : Date.now()) - Date.parse(j.started_at) : null) },
];

// A queued job's place in its pool's queue and why it waits (JobOut's queue_position and wait_reason, from the
// API's queue view); anything else its steps and ETA.
function listProgress(job) {
  if (job.status !== "queued") return progressText(job);
  const place = job.queue_position != null ? `#${job.queue_position} in queue` : "queued";
  return job.wait_reason ? `${place} · ${job.wait_reason}` : place;
}

function displayStatus(job) {
  return job.cancel_requested && job.status === "running" ? "cancelling" : job.status;
}

// The most-shot few-shot accuracy measured, e.g. {text: "10-shot 85.1%", value: 0.851}.
function fewShot(job) {
  const shots = [...(job.spec.eval?.few_shot || [])].sort((a, b) => b - a);
  const n = shots.find((k) => job.latest_metrics?.[`few_shot_${k}`] != null);
  if (n == null) return null;
  const value = job.latest_metrics[`few_shot_${n}`];
  return { text: `${n}-shot ${percent(value)}`, value };
}

function loadSelection() {
  try {
    return new Set(JSON.parse(sessionStorage.getItem(SELECTION_KEY) || "[]").map(Number));
  } catch {
    return new Set();
  }
}

export function mountList(view, params) {
  const state = {
    status: params.get("status") || "",
    kind: params.get("kind") || "",
    q: params.get("q") || "",
    sort: params.get("sort") || "",
    dir: params.get("dir") === "asc" ? "asc" : "desc",
    page: Math.max(Number(params.get("page")) || 1, 1),
    group: params.get("group") in GROUPINGS ? params.get("group") : "",
    sweep_id: Number(params.get("sweep_id")) || null, // narrowed to one sweep's children
    lineage_of: Number(params.get("lineage_of")) || null, // narrowed to a job and its fine-tunes
  };
  const groupRows = new Map(); // "sweep:ID" / "lineage:ID" -> its header row, kept across refreshes
  const selected = loadSelection();
  const rows = new Map(); // job id -> {tr, cells, values, checkbox, link, badge, fill, label}
  let items = []; // the current page, in the server's order

  const statusButtons = ["", ...STATUSES].map((status) =>
    h("button", { type: "button", class: "segment", "data-filter-status": status, onclick: () => setFilter({ status }) },
      status || "all"),
  );
  const kindSelect = h("select", { "aria-label": "kind", onchange: (e) => setFilter({ kind: e.target.value }) },
    h("option", { value: "" }, "all kinds"), h("option", { value: "pretrain" }, "pretrain"),
    h("option", { value: "finetune" }, "finetune"));
  kindSelect.value = state.kind;
  const groupSelect = h("select", { "aria-label": "group by", onchange: (e) => { state.group = e.target.value; writeUrl(); layout(); } },
    Object.entries(GROUPINGS).map(([value, label]) => h("option", { value }, `group by: ${label}`)));
  groupSelect.value = state.group;
  const narrowed = h("span", { class: "narrowed" }); // "sweep #3 ×": the filter that shows one whole group
  let searchTimer = null;
  const search = h("input", {
    type: "search", placeholder: "Search names…", "aria-label": "search", value: state.q, class: "search",
    oninput: (e) => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => setFilter({ q: e.target.value.trim() }), 250);
    },
  });
  const compare = h("button", { type: "button", class: "primary", onclick: openCompare }, "Compare");
  const clear = h("button", { type: "button", onclick: () => { selected.clear(); saveSelection(); } }, "Clear");
  const count = h("span", { class: "muted count" });
  const prev = h("button", { type: "button", onclick: () => setFilter({ page: state.page - 1 }) }, "‹ Newer");
  const next = h("button", { type: "button", onclick: () => setFilter({ page: state.page + 1 }) }, "Older ›");
  const headers = COLUMNS.map((column) => {
    const th = h("th", { class: column.num ? "num" : null, "data-col": column.key }, column.label);
    if (column.key !== "select") {
      th.classList.add("sortable");
      th.tabIndex = 0;
      th.addEventListener("click", () => sortBy(column.key));
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortBy(column.key); });
    }
    return th;
  });
  const tbody = h("tbody");
  const emptyRow = h("p", { class: "empty", hidden: true });
  const tableBox = h("div", { class: "table-scroll" }, h("table", { class: "jobs" }, h("thead", {}, h("tr", {}, headers)), tbody));

  view.append(
    h("div", { class: "toolbar" },
      h("h1", {}, "Jobs"),
      h("div", { class: "segments", role: "group", "aria-label": "status" }, statusButtons),
      kindSelect, groupSelect, search, narrowed,
      h("span", { class: "spacer" }),
      compare, clear),
    tableBox,
    emptyRow,
    h("div", { class: "pager" }, count, h("span", { class: "spacer" }), prev, next),
  );
  scrollHint(tableBox); // many spec columns on a narrow window (above the phone layout) scroll sideways

  function saveSelection() {
    sessionStorage.setItem(SELECTION_KEY, JSON.stringify([...selected]));
    for (const [id, row] of rows) row.checkbox.checked = selected.has(id);
    setText(compare, `Compare (${selected.size})`);
    compare.disabled = selected.size < 2;
    compare.title = selected.size < 2 ? "tick two jobs or more" : "";
    clear.hidden = selected.size === 0;
  }

  function openCompare() {
    location.hash = `#/compare?ids=${[...selected].sort((a, b) => a - b).join(",")}`;
  }

  function writeUrl() {
    const query = new URLSearchParams();
    if (state.status) query.set("status", state.status);
    if (state.kind) query.set("kind", state.kind);
    if (state.q) query.set("q", state.q);
    if (state.group) query.set("group", state.group);
    if (state.sweep_id) query.set("sweep_id", state.sweep_id);
    if (state.lineage_of) query.set("lineage_of", state.lineage_of);
    if (state.sort) { query.set("sort", state.sort); query.set("dir", state.dir); }
    if (state.page > 1) query.set("page", state.page);
    history.replaceState(null, "", `#/${query.toString() ? "?" + query : ""}`); // no hashchange: the view stays
  }

  function setFilter(change) {
    Object.assign(state, change);
    if (!("page" in change)) state.page = 1;
    writeUrl();
    for (const { tr } of rows.values()) tr.remove();
    rows.clear();
    refresh();
  }

  // A header click sorts this page by that column; a second click reverses; a third restores the newest-first order.
  function sortBy(key) {
    if (state.sort !== key) Object.assign(state, { sort: key, dir: "desc" });
    else if (state.dir === "desc") state.dir = "asc";
    else state.sort = "";
    writeUrl();
    layout();
  }

  function ordered() {
    const column = COLUMNS.find((c) => c.key === state.sort);
    if (!column) return items;
    const key = column.sort || column.text;
    const sign = state.dir === "asc" ? 1 : -1;
    const missing = (v) => v == null || v === "" || (typeof v === "number" && isNaN(v));
    return items.map((job) => ({ job, value: key(job) })).sort((a, b) => {
      if (missing(a.value) || missing(b.value)) return missing(a.value) - missing(b.value); // blanks last
      return a.value < b.value ? -sign : a.value > b.value ? sign : b.job.id - a.job.id;
    }).map((entry) => entry.job);
  }

  function buildRow(job) {
    const cells = Object.fromEntries(COLUMNS.map((c) => [c.key, h("td", { "data-label": c.label, "data-col": c.key })]));
    for (const column of COLUMNS) if (column.num) cells[column.key].classList.add("num");
    cells.id.classList.add("muted");
    const checkbox = h("input", { type: "checkbox", "aria-label": `select job ${job.id}` });
    checkbox.checked = selected.has(job.id);
    checkbox.addEventListener("change", () => {
      if (checkbox.checked) selected.add(job.id); else selected.delete(job.id);
      saveSelection();
    });
    cells.select.append(checkbox);
    const link = h("a", { href: `#/jobs/${job.id}` });
    const tags = h("span", { class: "tags" });
    cells.name.append(link, tags);
    const badge = h("span", { class: "badge" });
    cells.status.append(badge);
    const bar = h("div", { class: "bar" }, h("div", { class: "fill" }));
    const label = h("span", { class: "bar-label" });
    cells.progress.append(bar, label);
    const tr = h("tr", { "data-job-id": job.id }, COLUMNS.map((c) => cells[c.key]));
    tr.addEventListener("click", (e) => {
      if (!e.target.closest("a, input, td[data-col=select]")) location.hash = `#/jobs/${job.id}`;
    });
    return { tr, cells, checkbox, link, tags, badge, fill: bar.firstChild, label, values: {} };
  }

  function updateRow(row, job) {
    const values = Object.fromEntries(COLUMNS.filter((c) => c.text).map((c) => [c.key, c.text(job)]));
    values.width = `${Math.round((job.progress || 0) * 100)}%`;
    values.createdTitle = localTime(job.created_at);
    const old = row.values;
    for (const column of COLUMNS) {
      if (column.special || !column.text || old[column.key] === values[column.key]) continue;
      setText(row.cells[column.key], values[column.key]);
    }
    if (old.name !== values.name) setText(row.link, values.name);
    values.tags = (job.tags || []).join(",");
    if (old.tags !== values.tags) row.tags.replaceChildren(...(job.tags || []).map((t) => h("span", { class: "tag" }, t)));
    if (old.status !== values.status) {
      setText(row.badge, values.status);
      row.badge.className = `badge ${job.status}`;
      row.badge.dataset.status = job.status;
    }
    if (old.progress !== values.progress) setText(row.label, values.progress);
    if (old.width !== values.width) row.fill.style.width = values.width;
    if (old.created !== values.created) setText(row.cells.created, values.created);
    if (old.createdTitle !== values.createdTitle) row.cells.created.title = values.createdTitle;
    row.values = values;
  }

  // The page's jobs in display order, as [{job, depth}] with group headers ({group}) before each group. By sweep:
  // a sweep's children under one header where its newest stands. By lineage: each job under the job it was
  // fine-tuned from (when that one is on the page), recursively; a family gets a header.
  function arranged() {
    const jobs = ordered();
    if (state.group === "sweep") {
      const members = new Map();
      const out = [];
      for (const job of jobs) {
        if (job.sweep_id == null) { out.push({ job, depth: 0 }); continue; }
        if (!members.has(job.sweep_id)) {
          members.set(job.sweep_id, []);
          out.push({ group: { key: `sweep:${job.sweep_id}`, kind: "sweep", id: job.sweep_id } });
        }
        members.get(job.sweep_id).push(job);
      }
      return out.flatMap((entry) => (entry.group
        ? [entry, ...members.get(entry.group.id).map((job) => ({ job, depth: 1 }))] : [entry]));
    }
    if (state.group === "lineage") {
      const onPage = new Set(jobs.map((j) => j.id));
      const children = new Map();
      const roots = [];
      for (const job of jobs) {
        if (job.parent_job_id != null && onPage.has(job.parent_job_id)) {
          if (!children.has(job.parent_job_id)) children.set(job.parent_job_id, []);
          children.get(job.parent_job_id).push(job);
        } else roots.push(job);
      }
      const out = [];
      const visit = (job, depth) => {
        out.push({ job, depth });
        for (const child of children.get(job.id) || []) visit(child, depth + 1);
      };
      for (const root of roots) {
        const family = children.has(root.id) || root.parent_job_id != null;
        if (family) out.push({ group: { key: `lineage:${root.id}`, kind: "lineage", id: root.id, job: root } });
        visit(root, family ? 1 : 0);
      }
      return out;
    }
    return jobs.map((job) => ({ job, depth: 0 }));
  }

  function groupRow(group) {
    let row = groupRows.get(group.key);
    if (!row) {
      const cell = h("td", { colspan: String(COLUMNS.length) });
      row = { tr: h("tr", { class: "group-row", "data-group": group.key }, cell), cell, text: null };
      groupRows.set(group.key, row);
    }
    const count = items.filter((j) => (group.kind === "sweep" ? j.sweep_id === group.id : inLineage(j, group.id))).length;
    const text = `${group.key}|${count}|${group.job?.parent_job_id ?? ""}`;
    if (row.text !== text) {
      row.text = text;
      const all = group.kind === "sweep" ? { sweep_id: group.id } : { lineage_of: group.job.parent_job_id ?? group.id };
      row.cell.replaceChildren(
        group.kind === "sweep"
          ? h("a", { href: `#/sweeps/${group.id}` }, `Sweep #${group.id}`)
          : h("span", {}, "Lineage of ", h("a", { href: `#/jobs/${group.id}` }, `#${group.id}`),
            group.job.parent_job_id != null ? h("span", { class: "muted" }, ` (fine-tuned from #${group.job.parent_job_id})`) : ""),
        h("span", { class: "muted" }, ` · ${count} job${count === 1 ? "" : "s"} on this page`),
        h("button", { type: "button", class: "mini", onclick: () => setFilter({ ...all, sweep_id: all.sweep_id ?? null, lineage_of: all.lineage_of ?? null }) },
          group.kind === "sweep" ? "show the whole sweep" : "show the whole lineage"));
    }
    return row.tr;
  }

  // Whether a job of the page descends (on this page) from `rootId`, or is it.
  function inLineage(job, rootId) {
    const byId = new Map(items.map((j) => [j.id, j]));
    for (let j = job; j; j = byId.get(j.parent_job_id)) if (j.id === rootId) return true;
    return false;
  }

  // Keep the DOM in the displayed order, moving only the rows that are out of place.
  function layout() {
    let previous = null;
    const shownGroups = new Set();
    for (const entry of arranged()) {
      let tr;
      if (entry.group) {
        tr = groupRow(entry.group);
        shownGroups.add(entry.group.key);
      } else {
        const row = rows.get(entry.job.id);
        tr = row.tr;
        if (tr.dataset.depth !== String(entry.depth)) {
          tr.dataset.depth = String(entry.depth);
          tr.style.setProperty("--depth", String(entry.depth));
        }
      }
      const expected = previous ? previous.nextSibling : tbody.firstChild;
      if (expected !== tr) tbody.insertBefore(tr, expected);
      previous = tr;
    }
    for (const [key, row] of groupRows) {
      if (!shownGroups.has(key)) { row.tr.remove(); groupRows.delete(key); }
    }
    for (const th of headers) {
      const sorted = th.dataset.col === state.sort;
      th.classList.toggle("sorted", sorted);
      if (sorted) th.setAttribute("aria-sort", state.dir === "asc" ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  function currentQuery() {
    const query = new URLSearchParams({ limit: PAGE_SIZE, offset: (state.page - 1) * PAGE_SIZE });
    if (state.status) query.set("status", state.status);
    if (state.kind) query.set("kind", state.kind);
    if (state.q) query.set("q", state.q);
    if (state.sweep_id) query.set("sweep_id", state.sweep_id);
    if (state.lineage_of) query.set("lineage_of", state.lineage_of);
    return query.toString();
  }

  async function refresh() {
    const query = currentQuery();
    const page = await api(`/jobs?${query}`);
    if (query !== currentQuery()) return; // the filters changed while this request was in flight
    items = page.items;
    const seen = new Set();
    for (const job of items) {
      seen.add(job.id);
      let row = rows.get(job.id);
      if (!row) { row = buildRow(job); rows.set(job.id, row); }
      updateRow(row, job);
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    }
    layout();
    const first = page.total ? (state.page - 1) * PAGE_SIZE + 1 : 0;
    setText(count, `${first}–${(state.page - 1) * PAGE_SIZE + items.length} of ${page.total}`);
    prev.disabled = state.page <= 1;
    next.disabled = state.page * PAGE_SIZE >= page.total;
    emptyRow.hidden = items.length > 0;
    const filtered = state.status || state.kind || state.q || state.sweep_id || state.lineage_of;
    narrowed.replaceChildren(...[["sweep_id", "sweep"], ["lineage_of", "lineage of"]].filter(([key]) => state[key])
      .map(([key, label]) => h("button", { type: "button", class: "chip", "data-narrowed": key,
        title: "show every job again", onclick: () => setFilter({ [key]: null }) }, `${label} #${state[key]} ×`)));
    setText(emptyRow, filtered ? "No jobs match these filters." : "No jobs yet. Submit one with “New job”.");
    for (const button of statusButtons) {
      button.classList.toggle("active", button.dataset.filterStatus === state.status);
    }
    view.dataset.loaded = "true";
  }

  saveSelection();
  const stop = poll(refresh, 2000);
  return { destroy: () => { stop(); clearTimeout(searchTimer); } };
}
