// The submit form: a spec editor (paste, upload or an example), 422 errors listed and marked on the line of
// the offending key, and on success the new job's page.

import { ApiError, api } from "./api.js";
import { h } from "./format.js";
import { dumpYaml, findKeyLine } from "./yaml.js";

const LINE_HEIGHT = 20; // px; must match .editor textarea in app.css
const PADDING = 8;

export function mountSubmit(view, params) {
  const textarea = h("textarea", { spellcheck: "false", wrap: "off", "aria-label": "spec", name: "spec" });
  const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
  const marks = h("div", { class: "marks", "aria-hidden": "true" });
  const examples = h("select", { "aria-label": "example", onchange: onExample }, h("option", { value: "" }, "Start from an example…"));
  const upload = h("input", { type: "file", accept: ".yaml,.yml,.json,application/json,text/yaml", onchange: onUpload, hidden: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Submit");
  const errors = h("div", { class: "errors", role: "alert", "data-testid": "errors" });
  const heading = h("h1", {}, "New job");
  let fieldErrors = []; // [{loc: [...], msg}] from the last 422
  let exampleList = [];

  const form = h("form", { class: "submit-layout", onsubmit: onSubmit },
    h("div", { class: "editor-col" },
      h("div", { class: "toolbar" }, heading, h("span", { class: "spacer" }), examples,
        h("button", { type: "button", onclick: () => upload.click() }, "Upload file…"), upload),
      h("div", { class: "editor" }, gutter, h("div", { class: "editor-body" }, marks, textarea))),
    h("aside", { class: "side" },
      submit,
      errors,
      h("p", { class: "muted help" },
        "YAML or JSON. Only ", h("code", {}, "kind"), " is required; every other field has the paper's default for its kind ",
        "(see the resolved spec on the job page). Fine-tune with ", h("code", {}, "init: {from_job: ID}"), "."),
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

  // Each error: a tinted band on its line and the message right after the line's text.
  function renderMarks() {
    const lines = textarea.value.split("\n");
    for (const error of fieldErrors) error.line = findKeyLine(textarea.value, error.loc);
    marks.replaceChildren(...fieldErrors.filter((e) => e.line >= 0).flatMap((e) => {
      const top = `${PADDING + e.line * LINE_HEIGHT}px`;
      const left = `calc(${PADDING}px + ${lines[e.line].length + 3}ch)`;
      return [
        h("div", { class: "mark-line", style: `top:${top}` }),
        h("div", { class: "mark-msg", style: `top:${top};left:${left}`, "data-field": e.field }, `← ${e.msg}`),
      ];
    }));
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
        return { loc, field: loc.join(".") || "spec", msg: String(d.msg).replace(/^Value error, /, ""), line: -1 };
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
      const job = await api("/jobs", { method: "POST", body: text, contentType: isJson ? "application/json" : "application/yaml" });
      location.hash = `#/jobs/${job.id}`;
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

// A fine-tune spec that starts from `parent`: same architecture and data, the fine-tune defaults for the rest.
export function finetuneSpec(parent) {
  const s = parent.spec;
  const model = Object.fromEntries(Object.entries(s.model).filter(([k, v]) =>
    v !== null && !(k === "pool" && v === "cls") && !(k.endsWith("drop_rate") && v === 0)));
  const data = { dataset: s.data.dataset };
  if (s.data.root) data.root = s.data.root;
  if (s.data.subset != null) data.subset = s.data.subset;
  data.augment = s.data.augment;
  data.num_workers = s.data.num_workers;
  if (s.data.dataset === "synthetic") {
    data.synthetic_size = s.data.synthetic_size;
    data.synthetic_classes = s.data.synthetic_classes;
  }
  const train = {
    steps: s.train.steps,
    batch_size: s.train.batch_size,
    eval_every: s.train.eval_every,
    checkpoint_every: s.train.checkpoint_every,
  };
  const spec = { kind: "finetune", name: `${parent.name}-finetune`, model, data, train };
  if (s.eval.few_shot.length) spec.eval = { few_shot: s.eval.few_shot };
  spec.resources = s.resources;
  return `# Fine-tune from job ${parent.id} (${parent.name}): its latest checkpoint is loaded, with a new head.\n`
    + `${dumpYaml(spec)}\ninit: {from_job: ${parent.id}}\n`;
}
