// The submit form: a spec editor (paste, upload or an example), 422 errors listed and marked on the line of
// the offending key, and on success the new job's page. A sweep (a spec with a top-level `base:`) goes to
// POST /sweeps and on to the sweep's page.

import { ApiError, api } from "./api.js";
import { h, isWholeFloat } from "./format.js";
import { dumpYaml, findKeyLine } from "./yaml.js";

const LINE_HEIGHT = 20; // px; must match .editor textarea in app.css
const PADDING = 8;
const FINETUNE_SHARE = 4; // a fine-tune's default steps: the pretrain's over this

export function mountSubmit(view, params) {
  const textarea = h("textarea", { spellcheck: "false", wrap: "off", "aria-label": "spec", name: "spec" });
  const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
  const marks = h("div", { class: "marks", "aria-hidden": "true" });
  const examples = h("select", { "aria-label": "example", onchange: onExample }, h("option", { value: "" }, "Start from an example…"));
  const upload = h("input", { type: "file", accept: ".yaml,.yml,.json,application/json,text/yaml", onchange: onUpload, hidden: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Submit");
  const errors = h("div", { class: "errors", role: "alert", "data-testid": "errors" });
  const checkpointPicker = h("select", { "aria-label": "checkpoint", onchange: onCheckpoint });
  const checkpointField = h("label", { class: "field", hidden: true }, "Start from checkpoint", checkpointPicker);
  const heading = h("h1", {}, "New job");
  let fieldErrors = []; // [{loc: [...], msg}] from the last 422
  let exampleList = [];

  const form = h("form", { class: "submit-layout", onsubmit: onSubmit },
    h("div", { class: "editor-col" },
      h("div", { class: "toolbar" }, heading, h("span", { class: "spacer" }), examples,
        h("button", { type: "button", onclick: () => upload.click() }, "Upload file…"), upload),
      h("div", { class: "editor" }, gutter, h("div", { class: "editor-body" }, marks, textarea))),
    h("aside", { class: "side" },
      checkpointField,
      submit,
      errors,
      h("p", { class: "muted help" },
        "YAML or JSON. Only ", h("code", {}, "kind"), " is required; every other field has the paper's default for its kind ",
        "(see the resolved spec on the job page). Fine-tune with ", h("code", {}, "init: {from_job: ID}"), ". ",
        "A sweep: a spec under ", h("code", {}, "base:"), " with a ", h("code", {}, "grid:"), " or a search (",
        h("code", {}, "method: tpe"), ", ", h("code", {}, "space:"), ")."),
    ),
  );
  view.append(form);

  textarea.addEventListener("input", () => { renderGutter(); renderMarks(); });
  textarea.addEventListener("scroll", syncScroll);

  function setText(text) {
    textarea.value = text;
    fieldErrors = [];
    errors.replaceChildren();
    renderGutter();
    renderMarks();
  }

  function renderGutter() {
    const count = textarea.value.split("\n").length;
    if (gutter.childElementCount !== count) {
      gutter.replaceChildren(...Array.from({ length: count }, (_, i) => h("div", {}, String(i + 1))));
    }
    const bad = new Set(fieldErrors.map((e) => e.line));
    [...gutter.children].forEach((el, i) => el.classList.toggle("bad", bad.has(i)));
    syncScroll();
  }

  // Each error: a tinted band on its line and the message right after the line's text. A field error's line is
  // found from its path in the current text; a syntax error names its line in the message.
  function renderMarks() {
    const lines = textarea.value.split("\n");
    for (const error of fieldErrors) {
      error.line = error.syntaxLine ?? findKeyLine(textarea.value, error.loc);
      if (error.line >= lines.length) error.line = lines.length - 1;
    }
    marks.replaceChildren(...fieldErrors.filter((e) => e.line >= 0).flatMap((e) => {
      const top = `${PADDING + e.line * LINE_HEIGHT}px`;
      const left = `calc(${PADDING}px + ${lines[e.line].length + 3}ch)`;
      return [
        h("div", { class: "mark-line", style: `top:${top}` }),
        h("div", { class: "mark-msg", style: `top:${top};left:${left}`, "data-field": e.field, title: e.msg }, `← ${e.msg}`),
      ];
    }));
    // A message stays inside the editor's visible width (a phone's is ~370 px): right of its line when there is
    // room, else laid over the line's end on a tinted ground; too long, it ends in an ellipsis (its title and the
    // list below the form have it whole) instead of running out of sight.
    const visibleRight = marks.clientWidth + textarea.scrollLeft - 6;
    for (const msg of marks.querySelectorAll(".mark-msg")) {
      const room = visibleRight - msg.offsetLeft;
      if (room < Math.min(msg.scrollWidth, 160)) {
        const width = Math.min(msg.scrollWidth, marks.clientWidth * 0.8);
        msg.style.left = `${visibleRight - width}px`;
        msg.classList.add("over");
        msg.style.maxWidth = `${width}px`;
      } else {
        msg.style.maxWidth = `${room}px`;
      }
    }
    const bad = new Set(fieldErrors.map((e) => e.line));
    [...gutter.children].forEach((el, i) => el.classList.toggle("bad", bad.has(i)));
  }

  function syncScroll() {
    gutter.scrollTop = textarea.scrollTop;
    marks.style.transform = `translate(${-textarea.scrollLeft}px, ${-textarea.scrollTop}px)`;
  }

  function showErrors(err) {
    if (err instanceof ApiError && Array.isArray(err.detail)) {
      fieldErrors = err.detail.map((d) => {
        const loc = (d.loc || []).filter((part, i) => !(i === 0 && part === "body"));
        const msg = String(d.msg).replace(/^Value error, /, "");
        const syntax = /^(yaml|json)_invalid$/.test(d.type) ? msg.match(/ at line (\d+)/) : null;
        return { loc: syntax ? [] : loc, field: syntax ? "syntax" : loc.join(".") || "spec", msg, line: -1,
          syntaxLine: syntax ? Number(syntax[1]) - 1 : null };
      });
      renderMarks();
      errors.replaceChildren(
        h("p", {}, `The spec has ${fieldErrors.length === 1 ? "an error" : `${fieldErrors.length} errors`}:`),
        h("ul", {}, fieldErrors.map((e) => h("li", { "data-field": e.field, onclick: () => goToLine(e.line) },
          h("code", {}, e.field), " ", e.msg))),
      );
    } else {
      fieldErrors = [];
      renderMarks();
      errors.replaceChildren(h("p", {}, err.message));
    }
  }

  function goToLine(line) {
    if (line < 0) return;
    const lines = textarea.value.split("\n");
    const start = lines.slice(0, line).reduce((n, l) => n + l.length + 1, 0);
    textarea.focus();
    textarea.setSelectionRange(start, start + lines[line].length);
    textarea.scrollTop = Math.max(0, line * LINE_HEIGHT - textarea.clientHeight / 2);
  }

  async function onSubmit(event) {
    event.preventDefault();
    const text = textarea.value;
    if (!text.trim()) {
      showErrors(new Error("The spec is empty: paste one, upload a file or pick an example."));
      return;
    }
    submit.disabled = true;
    try {
      const isJson = text.trimStart().startsWith("{");
      const contentType = isJson ? "application/json" : "application/yaml";
      if (isSweep(text, isJson)) {
        const sweep = await api("/sweeps", { method: "POST", body: text, contentType });
        location.hash = `#/sweeps/${sweep.id}`;
      } else {
        const job = await api("/jobs", { method: "POST", body: text, contentType });
        location.hash = `#/jobs/${job.id}`;
      }
    } catch (err) {
      showErrors(err);
    } finally {
      submit.disabled = false;
    }
  }

  function onExample() {
    const example = exampleList.find((e) => e.name === examples.value);
    if (example) setText(example.text);
  }

  // The checkpoint to start from, written into the spec's `init:` line (which the form owns for a fine-tune).
  function onCheckpoint() {
    const fromJob = params.get("from_job");
    const chosen = checkpointPicker.value;
    const init = `init: {from_job: ${fromJob}${chosen ? `, checkpoint: ${chosen}` : ""}}`;
    const text = textarea.value;
    textarea.value = /^init:.*$/m.test(text) ? text.replace(/^init:.*$/m, init) : `${text.trimEnd()}\n${init}\n`;
    renderGutter();
    renderMarks();
  }

  async function loadCheckpoints(fromJob) {
    const { items } = await api(`/jobs/${fromJob}/checkpoints`);
    const latest = items.reduce((best, c) => (best && best.step >= c.step ? best : c), null);
    checkpointPicker.replaceChildren(
      h("option", { value: "" }, latest ? `latest (${latest.name})` : "latest"),
      ...[...items].sort((a, b) => b.step - a.step).map((c) => h("option", { value: c.name }, `${c.name} · step ${c.step}`)));
    checkpointField.hidden = false;
    const wanted = params.get("checkpoint");
    if (wanted && items.some((c) => c.name === wanted)) {
      checkpointPicker.value = wanted;
      onCheckpoint();
    }
  }

  async function onUpload() {
    const file = upload.files[0];
    if (file) setText(await file.text());
    upload.value = "";
  }

  async function prefill() {
    const fromJob = params.get("from_job");
    const copyOf = params.get("copy");
    try {
      exampleList = await api("/ui/examples");
      examples.append(...exampleList.map((e) => h("option", { value: e.name }, e.name)));
      if (fromJob) {
        setText(finetuneSpec(await api(`/jobs/${fromJob}`)));
        heading.textContent = `Fine-tune job ${fromJob}`;
        await loadCheckpoints(fromJob);
      } else if (copyOf) {
        const job = await api(`/jobs/${copyOf}`);
        setText(`# a copy of job ${copyOf}'s resolved spec\n${dumpYaml(job.spec)}\n`);
      } else {
        setText(exampleList.length ? exampleList[0].text : "kind: pretrain\nname: my-run\n");
        if (exampleList.length) examples.value = exampleList[0].name;
      }
    } catch (err) {
      showErrors(err);
    }
    view.dataset.ready = "true";
  }

  prefill();
  return { destroy() {} };
}

// A sweep names its base spec at the top level; a job spec has no `base` field.
export function isSweep(text, isJson) {
  if (!isJson) return /^base\s*:/m.test(text);
  try {
    const parsed = JSON.parse(text);
    return parsed !== null && typeof parsed === "object" && "base" in parsed;
  } catch {
    return false; // POST /jobs names the syntax error
  }
}

// A fine-tune spec that starts from `parent`: same architecture and data, the fine-tune defaults for the rest.
export function finetuneSpec(parent) {
  const s = parent.spec;
  const model = Object.fromEntries(Object.entries(s.model).filter(([k, v]) =>
    v !== null && !(k === "pool" && v === "cls") && !(k.endsWith("drop_rate") && v === 0)));
  const data = { dataset: s.data.dataset };
  if (s.data.root) data.root = s.data.root;
  if (s.data.subset != null && !isWholeFloat(s.data, "subset")) data.subset = s.data.subset; // 1.0: all, as null
  data.augment = s.data.augment;
  data.num_workers = s.data.num_workers;
  if (s.data.dataset === "synthetic") {
    data.synthetic_size = s.data.synthetic_size;
    data.synthetic_classes = s.data.synthetic_classes;
  }
  // A fine-tune is short next to its pretrain: a quarter of its steps (the digits examples: 400, then 100), with
  // evaluations and checkpoints as often relative to the run.
  const steps = Math.max(Math.round(s.train.steps / FINETUNE_SHARE), 1);
  const scaled = (every) => (every ? Math.max(Math.round(every / FINETUNE_SHARE), 1) : 0);
  const train = {
    steps,
    batch_size: s.train.batch_size,
    log_every: Math.min(s.train.log_every, steps),
    eval_every: scaled(s.train.eval_every),
    checkpoint_every: scaled(s.train.checkpoint_every),
  };
  const spec = { kind: "finetune", name: `${parent.name}-finetune`, model, data, train };
  if (s.eval.few_shot.length) spec.eval = { few_shot: s.eval.few_shot };
  spec.resources = s.resources;
  return `# Fine-tune from job ${parent.id} (${parent.name}) with a new head; train.steps is a quarter of the\n`
    + `# pretrain's ${s.train.steps}. The optimizer gets the fine-tune defaults (SGD, momentum 0.9, cosine).\n`
    + `${dumpYaml(spec)}\ninit: {from_job: ${parent.id}}\n`;
}
