// #/jobs/ID/log: the whole train.log, a page of lines at a time (GET /jobs/ID/logs/lines: a 100 MB log never
// reaches the browser whole), searched on the server (GET /jobs/ID/logs/search: literal text), and downloaded.

import { api, download } from "./api.js";
import { bytes, h, setText } from "./format.js";

const PAGE_LINES = 500;

// `text` with each occurrence of `query` in a <mark> (case-blind for ASCII letters, as the server searches).
export function highlighted(text, query, matchCase) {
  if (!query) return [text];
  const fold = (s) => (matchCase ? s : s.replace(/[A-Z]/g, (c) => c.toLowerCase()));
  const haystack = fold(text);
  const needle = fold(query);
  const parts = [];
  let from = 0;
  for (let at = haystack.indexOf(needle); at !== -1; at = haystack.indexOf(needle, at + needle.length)) {
    if (at > from) parts.push(text.slice(from, at));
    parts.push(h("mark", {}, text.slice(at, at + needle.length)));
    from = at + needle.length;
  }
  if (from < text.length) parts.push(text.slice(from));
  return parts;
}

export function mountLog(view, id, params) {
  const state = { start: 1, total: 0, query: "", matchCase: false, line: Number(params.get("line")) || null };
  const info = h("span", { class: "muted", "data-testid": "log-info" });
  const downloadButton = h("button", { type: "button", onclick: onDownload }, "Download");
  const queryInput = h("input", { type: "search", class: "search", name: "q", "aria-label": "search the log",
    placeholder: "Find text in the log…", maxlength: "200" });
  const caseBox = h("input", { type: "checkbox", name: "match_case" });
  const searchStatus = h("span", { class: "muted", role: "status", "data-testid": "search-status" });
  const results = h("ol", { class: "log-matches" });
  const lines = h("div", { class: "log-lines", "data-testid": "log-lines" });
  const first = h("button", { type: "button", onclick: () => show(1) }, "« First");
  const prev = h("button", { type: "button", onclick: () => show(state.start - PAGE_LINES) }, "‹ Previous");
  const next = h("button", { type: "button", onclick: () => show(state.start + PAGE_LINES) }, "Next ›");
  const last = h("button", { type: "button", onclick: () => show(lastPageStart()) }, "Last »");
  const gotoInput = h("input", { type: "number", min: "1", class: "goto", "aria-label": "go to line", placeholder: "line" });
  const range = h("span", { class: "muted" });

  view.append(
    h("div", { class: "job-head" },
      h("a", { href: `#/jobs/${id}`, class: "back" }, `← Job ${id}`),
      h("h1", {}, `Log of job ${id}`), info, h("span", { class: "spacer" }), downloadButton),
    h("form", { class: "toolbar log-search", onsubmit: onSearch },
      queryInput, h("label", {}, caseBox, " match case"), h("button", { type: "submit", class: "primary" }, "Search"),
      searchStatus),
    results,
    h("div", { class: "pager" }, first, prev, range, next, last, h("span", { class: "spacer" }),
      h("form", { onsubmit: (e) => { e.preventDefault(); goToLine(Number(gotoInput.value)); } }, gotoInput,
        h("button", { type: "submit" }, "Go"))),
    lines,
  );

  const lastPageStart = () => Math.max(1, Math.floor((state.total - 1) / PAGE_LINES) * PAGE_LINES + 1);

  async function show(start, focusLine = null) {
    const page = await api(`/jobs/${id}/logs/lines?start=${Math.max(1, start)}&count=${PAGE_LINES}`);
    Object.assign(state, { start: page.start, total: page.total_lines });
    setText(info, `${page.total_lines.toLocaleString()} lines, ${bytes(page.size_bytes)}`);
    // Nothing to download before the trainer writes its first line (the route answers 404 then).
    downloadButton.disabled = !page.size_bytes;
    downloadButton.title = page.size_bytes ? "" : "no log yet: the job has not written one";
    lines.replaceChildren(...page.lines.map((text, i) => {
      const number = page.start + i;
      return h("div", { class: number === focusLine ? "log-line focused" : "log-line", "data-line": String(number) },
        h("span", { class: "ln" }, String(number)), h("span", { class: "text" }, highlighted(text, state.query, state.matchCase)));
    }));
    if (!page.lines.length) lines.append(h("p", { class: "empty" }, page.total_lines ? "No lines here." : "No log yet."));
    const end = page.start + page.lines.length - 1;
    setText(range, page.lines.length ? `lines ${page.start.toLocaleString()}–${end.toLocaleString()} of ${page.total_lines.toLocaleString()}` : "");
    prev.disabled = first.disabled = page.start <= 1;
    next.disabled = last.disabled = end >= page.total_lines;
    if (focusLine) lines.querySelector(`[data-line="${focusLine}"]`)?.scrollIntoView({ block: "center" });
    view.dataset.page = String(page.start);
  }

  function goToLine(number) {
    if (!number || number < 1) return;
    show(Math.floor((number - 1) / PAGE_LINES) * PAGE_LINES + 1, number).catch(failed);
  }

  async function onSearch(event) {
    event.preventDefault();
    const query = queryInput.value;
    Object.assign(state, { query, matchCase: caseBox.checked });
    results.replaceChildren();
    if (!query) { setText(searchStatus, ""); return show(state.start).catch(failed); }
    setText(searchStatus, "searching…");
    const found = await api(`/jobs/${id}/logs/search?${new URLSearchParams({ q: query, match_case: caseBox.checked })}`)
      .catch((err) => { setText(searchStatus, err.message); return null; });
    if (!found) return;
    const count = found.matches.length;
    setText(searchStatus, count ? `${count}${found.more ? "+" : ""} matching line${count === 1 && !found.more ? "" : "s"}` : "no line matches");
    results.replaceChildren(...found.matches.map((m) => h("li", { "data-line": String(m.line) },
      h("a", { href: `#/jobs/${id}/log?line=${m.line}`, onclick: (e) => { e.preventDefault(); goToLine(m.line); } },
        h("span", { class: "ln" }, String(m.line)), h("span", { class: "text" }, highlighted(m.text, query, state.matchCase))))));
    view.dataset.searched = "true";
    await show(state.start); // the page's matches are marked too
  }

  function onDownload() {
    // A 404 here is a log that is not there (yet), not a missing job: say so instead of leaving the page.
    download(`/jobs/${id}/logs/download`, `job${id}-train.log`)
      .catch((err) => alert(err.status === 404 ? `Job ${id} has no log yet.` : err.message));
  }

  function failed(err) {
    if (err.status === 404) view.replaceChildren(h("p", { class: "empty" }, `Job ${id} not found.`));
    else alert(err.message);
  }

  if (state.line) goToLine(state.line);
  else show(1).catch(failed);
  return { destroy() {} };
}
