// Transfers: #/transfers lists them; #/transfers/ID shows the paper's transfer table (a row per dataset, a
// column per metric: the few-shot probes' k-shot accuracies and the fine-tune's top-1, then the mean), filled in
// as the children succeed, with each child's status, a CSV download and Cancel.

import { api } from "./api.js";
import { h, localTime, poll, scrollHint, setText, statusBadge } from "./format.js";

// An accuracy as the paper prints it; a cell whose child has not succeeded shows that child's state instead.
function cell(value, status) {
  if (value != null) return h("span", { class: "acc" }, (value * 100).toFixed(1));
  if (status === "succeeded" || status == null) return h("span", { class: "muted" }, "—");
  return statusBadge(status);
}

function countsText(counts) {
  return Object.entries(counts).map(([status, n]) => `${n} ${status}`).join(", ");
}

// The pretrained weights: a job's (a link to it) or a file under the data directory.
function sourceOf(spec) {
  return spec.from_job != null ? h("a", { href: `#/jobs/${spec.from_job}` }, `job #${spec.from_job}`) : spec.weights;
}

export function mountTransferList(view) {
  const tbody = h("tbody");
  const empty = h("p", { class: "empty", hidden: true }, "No transfers yet: POST /transfers or `vitq transfer SPEC.yaml`.");
  view.append(h("div", { class: "toolbar" }, h("h1", {}, "Transfers")),
    h("div", { class: "table-scroll" }, h("table", { class: "jobs transfers" },
      h("thead", {}, h("tr", {}, ["#", "Name", "Source", "Datasets", "Columns", "Jobs", "Mean", "Created"].map((t) => h("th", {}, t)))),
      tbody)),
    empty);

  async function refresh() {
    const { items } = await api("/transfers?limit=100");
    tbody.replaceChildren(...items.map((t) => {
      const source = sourceOf(t.spec.source);
      const means = t.table.columns.map((c) => `${c.label} ${t.table.mean[c.key] == null ? "—" : (t.table.mean[c.key] * 100).toFixed(1)}`);
      return h("tr", { "data-transfer-id": t.id },
        h("td", { class: "num muted", "data-label": "#" }, String(t.id)),
        h("td", { "data-label": "Name", "data-col": "name" }, h("a", { href: `#/transfers/${t.id}` }, t.name)),
        h("td", { "data-label": "Source" }, source),
        h("td", { "data-label": "Datasets" }, t.table.rows.map((r) => r.dataset).join(", ")),
        h("td", { "data-label": "Columns" }, t.table.columns.map((c) => c.label).join(", ")),
        h("td", { "data-label": "Jobs" }, countsText(t.status_counts)),
        h("td", { "data-label": "Mean" }, means.join(" · ")),
        h("td", { "data-label": "Created" }, localTime(t.created_at)));
    }));
    empty.hidden = items.length > 0;
    view.dataset.loaded = "true";
  }

  const stop = poll(refresh, 3000);
  return { destroy: stop };
}

export function mountTransfer(view, id) {
  const heading = h("h1", {}, `Transfer ${id}`);
  const counts = h("span", { class: "muted transfer-summary" });
  const source = h("p", { class: "muted transfer-source" });
  const csv = h("a", { class: "button", href: `/transfers/${id}/table.csv`, download: `transfer${id}.csv` }, "CSV");
  const cancel = h("button", { type: "button", class: "danger", hidden: true, onclick: onCancel }, "Cancel");
  const tableBox = h("div", { class: "table-scroll", "data-table": "transfer" });
  const jobsBox = h("div", { class: "table-scroll" });
  view.append(
    h("div", { class: "job-head" }, h("a", { href: "#/transfers", class: "back" }, "← Transfers"), heading, counts,
      h("span", { class: "spacer" }), csv, cancel),
    source,
    h("section", { class: "panel" }, h("h2", {}, "Transfer accuracy (%)"), tableBox,
      h("p", { class: "muted note" }, "k-shot: a closed-form ridge probe on the frozen pretrained features, k training images per class; fine-tune: top-1 after fine-tuning. Cells fill in as each job succeeds.")),
    h("section", { class: "panel" }, h("h2", {}, "Jobs"), jobsBox),
  );
  scrollHint(tableBox);
  scrollHint(jobsBox);
  let transfer = null;

  async function onCancel() {
    if (!confirm(`Cancel every unfinished job of transfer ${id} (${transfer?.name})?`)) return;
    cancel.disabled = true;
    try {
      transfer = await api(`/transfers/${id}/cancel`, { method: "POST" });
      render();
    } catch (err) {
      alert(err.message);
    } finally {
      cancel.disabled = false;
    }
  }

  function render() {
    const { table } = transfer;
    setText(heading, `Transfer ${id}: ${transfer.name}`);
    setText(counts, countsText(transfer.status_counts));
    const from = JSON.stringify(transfer.spec.source);
    if (source.dataset.from !== from) { // kept between polls: a link that is rebuilt every poll cannot be clicked
      source.dataset.from = from;
      source.replaceChildren("Source: ", sourceOf(transfer.spec.source));
    }
    cancel.hidden = transfer.finished;
    // The dataset column stays put while the metrics scroll sideways on a narrow screen.
    tableBox.replaceChildren(h("table", { class: "small transfer-table" },
      h("thead", {}, h("tr", {}, h("th", { class: "sticky" }, "Dataset"), table.columns.map((c) => h("th", { class: "num", "data-key": c.key }, c.label)))),
      h("tbody", {}, table.rows.map((r) => h("tr", { "data-dataset": r.dataset },
        h("th", { class: "sticky", scope: "row" }, r.dataset),
        table.columns.map((c) => h("td", { class: "num", "data-key": c.key }, cell(r.values[c.key], r.status[c.role])))))),
      h("tfoot", {}, h("tr", { "data-dataset": "mean" }, h("th", { class: "sticky", scope: "row" }, "Mean"),
        table.columns.map((c) => h("td", { class: "num", "data-key": c.key }, cell(table.mean[c.key], null)))))));
    jobsBox.replaceChildren(h("table", { class: "small" },
      h("thead", {}, h("tr", {}, ["Job", "Dataset", "Role", "Status"].map((t) => h("th", {}, t)))),
      h("tbody", {}, table.rows.flatMap((r) => ["probe", "finetune"].filter((role) => r[role] != null).map((role) => {
        const job = transfer.jobs.find((j) => j.id === r[role]);
        return h("tr", { "data-job-id": r[role] },
          h("td", {}, h("a", { href: `#/jobs/${r[role]}` }, `#${r[role]} ${job?.name ?? ""}`)),
          h("td", {}, r.dataset), h("td", {}, role === "probe" ? "few-shot probe" : "fine-tune"),
          h("td", {}, job ? statusBadge(job.status, job.cancel_requested) : ""));
      })))));
    view.dataset.loaded = "true";
  }

  async function refresh() {
    try {
      transfer = await api(`/transfers/${id}`);
    } catch (err) {
      if (err.status !== 404) throw err;
      view.replaceChildren(h("p", { class: "empty" }, `Transfer ${id} not found.`));
      return false;
    }
    render();
    return !transfer.finished;
  }

  const stop = poll(refresh, 3000);
  return { destroy: stop };
}
