// #/workers: the live workers (GET /workers), their pool and address, and each GPU with the job that holds it.

import { api } from "./api.js";
import { bytes, h, localTime, poll } from "./format.js";

// A device, the job holding it and, once the worker has measured it, how busy it is and its memory in use.
function deviceCell(device, gpuUsage) {
  const label = `${device.index}: ${device.name} (${Math.round(device.memory_mb / 1024)} GiB)`;
  const holder = device.job_id != null
    ? h("a", { href: `#/jobs/${device.job_id}` }, `job #${device.job_id}`)
    : device.busy ? "busy" : "free";
  const used = gpuUsage.find((g) => g.index === device.index);
  const figures = used ? h("span", { class: "usage", "data-gpu-usage": String(device.index) },
    ` · ${Math.round(used.util_percent)}% busy · ${bytes(used.mem_used_bytes)} of ${bytes(used.mem_total_bytes)}`) : "";
  return h("li", { "data-device": String(device.index), class: device.busy ? "busy" : "free" }, label, " — ", holder, figures);
}

// The host at the worker's last heartbeat: CPU of all its cores, memory in use (total minus available).
function hostCell(usage) {
  if (!usage) return h("span", { class: "muted" }, "not measured");
  return h("span", { class: "usage", "data-host-usage": "" },
    h("span", {}, `CPU ${Math.round(usage.cpu_percent)}%`), " · ",
    h("span", {}, `RAM ${bytes(usage.mem_used_bytes)} of ${bytes(usage.mem_total_bytes)}`));
}

export function mountWorkers(view) {
  const tbody = h("tbody");
  const empty = h("p", { class: "empty", hidden: true }, "No live worker: start one with `vitq worker`.");
  view.append(h("div", { class: "toolbar" }, h("h1", {}, "Workers")),
    h("div", { class: "table-scroll" }, h("table", { class: "jobs workers" },
      h("thead", {}, h("tr", {}, ["Worker", "Pool", "Address", "CPUs", "Host now", "Jobs", "GPUs", "Heartbeat"].map((t) => h("th", {}, t)))),
      tbody)),
    empty);

  async function refresh() {
    const { items } = await api("/workers");
    tbody.replaceChildren(...items.map((w) => h("tr", { "data-worker": w.name },
      h("td", { "data-label": "Worker" }, w.name),
      // A Slurm node of the pool's partition (`vitq slurm`) shows it: "hpc (Slurm partition batch)".
      h("td", { "data-label": "Pool" }, w.partition ? `${w.pool} (Slurm partition ${w.partition})` : w.pool),
      h("td", { "data-label": "Address" }, w.address),
      h("td", { class: "num", "data-label": "CPUs" }, String(w.cpus)),
      h("td", { "data-label": "Host now" }, hostCell(w.usage)),
      h("td", { "data-label": "Jobs" }, ...w.jobs.flatMap((id, i) => [i ? ", " : "", h("a", { href: `#/jobs/${id}` }, `#${id}`)])),
      h("td", { "data-label": "GPUs" }, w.devices.length ? h("ul", { class: "devices" }, ...w.devices.map((d) => deviceCell(d, w.usage?.gpus ?? []))) : "none (CPU)"),
      h("td", { "data-label": "Heartbeat" }, localTime(w.heartbeat_at)))));
    empty.hidden = items.length > 0;
    view.dataset.loaded = "true";
  }

  const stop = poll(refresh, 3000);
  return { destroy: stop };
}
