// The job list: filters, pagination and a table refreshed every 2 s. Rows are keyed by job id and only the
// cells whose text changed are touched, so polling never rebuilds the table.

import { api } from "./api.js";
import { h, jobDuration, localTime, number, percent, poll, progressText, relativeTime, setText } from "./format.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const PAGE_SIZE = 50;
const COLUMNS = ["id", "name", "kind", "status", "progress", "throughput", "val", "created", "duration"];

export function mountList(view, params) {
  const state = {
    status: params.get("status") || "",
    kind: params.get("kind") || "",
    page: Math.max(Number(params.get("page")) || 1, 1),
  };
  const rows = new Map(); // job id -> {tr, cells, values}

  const statusButtons = ["", ...STATUSES].map((status) =>
    h("button", { type: "button", class: "segment", "data-filter-status": status, onclick: () => setFilter({ status }) },
      status || "all"),
  );
  const kindSelect = h("select", { "aria-label": "kind", onchange: (e) => setFilter({ kind: e.target.value }) },
    h("option", { value: "" }, "all kinds"), h("option", { value: "pretrain" }, "pretrain"),
    h("option", { value: "finetune" }, "finetune"));
  kindSelect.value = state.kind;
  const count = h("span", { class: "muted count" });
  const prev = h("button", { type: "button", onclick: () => setFilter({ page: state.page - 1 }) }, "‹ Newer");
  const next = h("button", { type: "button", onclick: () => setFilter({ page: state.page + 1 }) }, "Older ›");
  const tbody = h("tbody");
  const emptyRow = h("p", { class: "empty", hidden: true });

  view.append(
    h("div", { class: "toolbar" },
      h("h1", {}, "Jobs"),
      h("div", { class: "segments", role: "group", "aria-label": "status" }, statusButtons),
      kindSelect,
      h("span", { class: "spacer" }),
      count, prev, next),
    h("table", { class: "jobs" },
      h("thead", {}, h("tr", {},
        h("th", { class: "num" }, "#"), h("th", {}, "Name"), h("th", {}, "Kind"), h("th", {}, "Status"),
        h("th", { class: "progress-col" }, "Progress"), h("th", { class: "num" }, "img/s"),
        h("th", { class: "num" }, "Best val top-1"), h("th", {}, "Created"), h("th", { class: "num" }, "Duration"))),
      tbody),
    emptyRow,
  );

  function setFilter(change) {
    Object.assign(state, change);
    if (!("page" in change)) state.page = 1;
    const query = new URLSearchParams();
    if (state.status) query.set("status", state.status);
    if (state.kind) query.set("kind", state.kind);
    if (state.page > 1) query.set("page", state.page);
    const hash = `#/${query.toString() ? "?" + query : ""}`;
    history.replaceState(null, "", hash); // no hashchange: the view stays mounted
    for (const { tr } of rows.values()) tr.remove();
    rows.clear();
    refresh();
  }

  function buildRow(job) {
    const cells = Object.fromEntries(COLUMNS.map((c) => [c, h("td")]));
    cells.id.className = "num muted";
    cells.throughput.className = cells.val.className = cells.duration.className = "num";
    const link = h("a", { href: `#/jobs/${job.id}` });
    cells.name.append(link);
    const badge = h("span", { class: "badge" });
    cells.status.append(badge);
    const bar = h("div", { class: "bar" }, h("div", { class: "fill" }));
    const label = h("span", { class: "bar-label" });
    cells.progress.append(bar, label);
    const tr = h("tr", { "data-job-id": job.id }, COLUMNS.map((c) => cells[c]));
    tr.addEventListener("click", (e) => {
      if (!e.target.closest("a")) location.hash = `#/jobs/${job.id}`;
    });
    return { tr, cells, link, badge, fill: bar.firstChild, label, values: {} };
  }

  function updateRow(row, job) {
    const status = job.cancel_requested && job.status === "running" ? "cancelling" : job.status;
    const values = {
      id: String(job.id),
      name: job.name,
      kind: job.kind,
      status,
      progress: progressText(job),
      width: `${Math.round((job.progress || 0) * 100)}%`,
      throughput: job.images_per_s == null ? "" : number(job.images_per_s, 3),
      val: percent(job.best_val_top1),
      created: relativeTime(job.created_at),
      createdTitle: localTime(job.created_at),
      duration: jobDuration(job),
    };
    const old = row.values;
    if (old.id !== values.id) setText(row.cells.id, values.id);
    if (old.name !== values.name) setText(row.link, values.name);
    if (old.kind !== values.kind) setText(row.cells.kind, values.kind);
    if (old.status !== values.status) {
      setText(row.badge, status);
      row.badge.className = `badge ${job.status}`;
      row.badge.dataset.status = job.status;
    }
    if (old.progress !== values.progress) setText(row.label, values.progress);
    if (old.width !== values.width) row.fill.style.width = values.width;
    if (old.throughput !== values.throughput) setText(row.cells.throughput, values.throughput);
    if (old.val !== values.val) setText(row.cells.val, values.val);
    if (old.created !== values.created) setText(row.cells.created, values.created);
    if (old.createdTitle !== values.createdTitle) row.cells.created.title = values.createdTitle;
    if (old.duration !== values.duration) setText(row.cells.duration, values.duration);
    row.values = values;
  }

  function currentQuery() {
    const query = new URLSearchParams({ limit: PAGE_SIZE, offset: (state.page - 1) * PAGE_SIZE });
    if (state.status) query.set("status", state.status);
    if (state.kind) query.set("kind", state.kind);
    return query.toString();
  }

  async function refresh() {
    const query = currentQuery();
    const page = await api(`/jobs?${query}`);
    if (query !== currentQuery()) return; // the filters changed while this request was in flight
    const seen = new Set();
    let previous = null;
    for (const job of page.items) {
      seen.add(job.id);
      let row = rows.get(job.id);
      if (!row) { row = buildRow(job); rows.set(job.id, row); }
      updateRow(row, job);
      // Keep DOM order equal to the server's order, moving only rows that are out of place.
      const expected = previous ? previous.nextSibling : tbody.firstChild;
      if (expected !== row.tr) tbody.insertBefore(row.tr, expected);
      previous = row.tr;
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    }
    const first = page.total ? (state.page - 1) * PAGE_SIZE + 1 : 0;
    setText(count, `${first}–${(state.page - 1) * PAGE_SIZE + page.items.length} of ${page.total}`);
    prev.disabled = state.page <= 1;
    next.disabled = state.page * PAGE_SIZE >= page.total;
    emptyRow.hidden = page.items.length > 0;
    setText(emptyRow, state.status || state.kind ? "No jobs match these filters." : "No jobs yet. Submit one with “New job”.");
    for (const button of statusButtons) {
      button.classList.toggle("active", button.dataset.filterStatus === state.status);
    }
    view.dataset.loaded = "true";
  }

  const stop = poll(refresh, 2000);
  return { destroy: stop };
}
