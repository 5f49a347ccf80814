// Hash routes (GET /jobs/{id} is the JSON API, so pages live under #/): #/ list, #/jobs/ID, #/submit,
// #/compare?ids=1,2,3, #/sweeps, #/sweeps/ID, #/transfers, #/transfers/ID, #/jobs/ID/log?line=N.

import { mountCompare } from "./compare.js";
import { mountJob } from "./job.js";
import { mountList } from "./list.js";
import { mountLog } from "./log.js";
import { mountSubmit } from "./submit.js";
import { mountSweep, mountSweepList } from "./sweep.js";
import { mountTransfer, mountTransferList } from "./transfer.js";
import { mountWorkers } from "./workers.js";
import { watchWorkers } from "./workers_banner.js";

let current = null;

function route() {
  current?.destroy();
  const [path, query = ""] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query);
  const view = document.getElementById("view");
  view.replaceChildren();
  for (const key of Object.keys(view.dataset)) delete view.dataset[key];
  const job = path.match(/^\/jobs\/(\d+)$/);
  if (job) {
    view.className = "job-view";
    current = mountJob(view, Number(job[1]));
  } else if (path.match(/^\/jobs\/(\d+)\/log$/)) {
    view.className = "log-view";
    current = mountLog(view, Number(path.split("/")[2]), params);
  } else if (path.match(/^\/sweeps\/(\d+)$/)) {
    view.className = "sweep-view";
    current = mountSweep(view, Number(path.split("/")[2]));
  } else if (path === "/sweeps") {
    view.className = "sweeps-view";
    current = mountSweepList(view);
  } else if (path.match(/^\/transfers\/(\d+)$/)) {
    view.className = "transfer-view";
    current = mountTransfer(view, Number(path.split("/")[2]));
  } else if (path === "/transfers") {
    view.className = "transfers-view";
    current = mountTransferList(view);
  } else if (path === "/workers") {
    view.className = "workers-view";
    current = mountWorkers(view);
  } else if (path === "/compare") {
    view.className = "compare-view";
    current = mountCompare(view, params);
  } else if (path === "/submit") {
    view.className = "submit-view";
    current = mountSubmit(view, params);
  } else {
    view.className = "list-view";
    current = mountList(view, params);
  }
  window.scrollTo(0, 0);
}

window.addEventListener("hashchange", route);
route();
watchWorkers(document.getElementById("no-worker"));
