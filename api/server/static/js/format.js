// Small formatting helpers shared by the views.

export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "";
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

export function jobDuration(job) {
  if (!job.started_at) return "";
  const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
  return duration((end - Date.parse(job.started_at)) / 1000);
}

export function relativeTime(iso) {
  if (!iso) return "";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

export function localTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export function number(value, digits = 3) {
  if (value == null || !isFinite(value)) return "";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(Math.max(digits - 2, 1));
  return Number(value.toPrecision(digits + 1)).toString();
}

export function percent(value) {
  return value == null ? "" : `${(value * 100).toFixed(1)}%`;
}

// A reading of a measured value: 5 significant digits ("1.0036", not "1.0036273002624512").
export function significant(value, digits = 5) {
  if (value == null || !isFinite(value)) return "";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-4 || abs >= 1e7)) return value.toExponential(digits - 1);
  return Number(value.toPrecision(digits)).toString();
}

// Decimals needed to write `step` (a tick increment) exactly: 2.5 -> 1, 0.05 -> 2, 100 -> 0.
export function decimalsOf(step) {
  for (let d = 0; d < 8; d++) {
    const scaled = Math.abs(step) * 10 ** d;
    if (Math.abs(scaled - Math.round(scaled)) < 1e-6 * Math.max(scaled, 1)) return d;
  }
  return 8;
}

// An axis tick: as many decimals as the tick spacing needs, so 92.5 % is not rounded to 93 %.
export function tick(value, increment, { asPercent = false } = {}) {
  if (value == null) return "";
  if (asPercent) return `${(value * 100).toFixed(decimalsOf(increment * 100))}%`;
  // Ticks spaced below 1e-3 or above 1e6 (a learning rate, images seen) read better as powers of ten: "2.5e-4".
  const spacing = Math.abs(increment);
  if (spacing && (spacing < 1e-3 || spacing >= 1e6)) return value === 0 ? "0" : Number(value.toPrecision(4)).toExponential();
  return value.toFixed(decimalsOf(increment));
}

// Large counts compactly: 12,800 -> "12.8k", 3,200,000 -> "3.2M".
export function compact(value) {
  if (value == null || !isFinite(value)) return "";
  const abs = Math.abs(value);
  for (const [limit, suffix] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (abs >= limit) return `${Number((value / limit).toPrecision(3))}${suffix}`;
  }
  return String(Math.round(value * 100) / 100);
}

// Powers of 1024, so named as such (KiB, MiB, GiB): the workers page shows a GPU's "80 GiB" next to these, and
// "23.5 GB" for a 25.3e9-byte host was a wrong unit.
const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function bytes(n) {
  if (n == null) return "";
  let i = 0;
  while (Math.abs(n) >= 1024 && i < BYTE_UNITS.length - 1) { n /= 1024; i++; }
  return `${i ? Number(n.toFixed(1)) : Math.round(n)} ${BYTE_UNITS[i]}`;
}

// Tick steps for an axis of bytes: 1, 2, 4 ... 512 of each unit, so that ticks fall on round binary sizes
// (512 MiB, 1 GiB) instead of uPlot's decimal steps shown in binary units (953.7 MB, 762.9 MB).
export const BYTE_INCREMENTS = BYTE_UNITS.flatMap((_, power) =>
  [1, 2, 4, 8, 16, 32, 64, 128, 256, 512].map((m) => m * 1024 ** power));

// A tick on such an axis, in the unit its spacing is written in without repeats: ticks 64 MiB apart read
// "1088 MiB, 1152 MiB", not "1.1 GiB" twice; 256 MiB apart, "1.25 GiB, 1.5 GiB".
export function bytesTick(value, increment) {
  if (value == null) return "";
  let power = BYTE_UNITS.length - 1;
  while (power > 0 && increment / 1024 ** power < 0.25) power--;
  const scaled = value / 1024 ** power;
  return `${scaled.toFixed(decimalsOf(increment / 1024 ** power))} ${BYTE_UNITS[power]}`;
}

export function progressText(job) {
  const eta = job.status === "running" && job.eta_seconds != null ? ` · ETA ${duration(job.eta_seconds)}` : "";
  return `${job.step}/${job.total_steps}${eta}`;
}

// Element builder: h("td", {class: "num"}, "text", child, ...).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child != null && child !== false) el.append(child);
  }
  return el;
}

export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

export function statusBadge(status, cancelRequested = false) {
  const label = cancelRequested && status === "running" ? "cancelling" : status;
  return h("span", { class: `badge ${status}`, "data-status": status }, label);
}

// Runs `tick` now and then every `ms` after each run finishes (never overlapping); skips while the tab is
// hidden; stops when `tick` returns false or the returned function is called.
export function poll(tick, ms) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        if ((await tick()) === false) stopped = true;
      } catch (err) {
        console.warn(err);
      }
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  return () => { stopped = true; clearTimeout(timer); };
}

// For a scrolling box (.table-scroll): a line before it, "Scroll sideways: N more columns →", and a shadow on
// its right edge while anything is hidden there; both go when everything fits. Returns the hint element.
export function scrollHint(box) {
  const hint = h("p", { class: "scroll-hint", hidden: true, "aria-live": "polite" }, "Scroll sideways for more →");
  const update = () => {
    const hidden = box.scrollWidth - box.clientWidth - box.scrollLeft;
    hint.hidden = box.scrollWidth <= box.clientWidth + 1;
    box.classList.toggle("more-right", hidden > 1);
  };
  box.addEventListener("scroll", update, { passive: true });
  new ResizeObserver(update).observe(box);
  new MutationObserver(update).observe(box, { childList: true, subtree: true });
  box.before(hint);
  return hint;
}

// Numbers the API wrote as floats with a whole value ("subset": 1.0), which JSON.parse makes 1 like an int: for
// a subset that is the difference between all images and one per class. api.js fills it while parsing (the
// reviver's source text); keyed by the object holding the number, then the key.
const wholeFloats = new WeakMap();

export function jsonReviver(key, value, context) {
  if (typeof value === "number" && Number.isInteger(value) && /[.eE]/.test(context?.source ?? "")) {
    if (!wholeFloats.has(this)) wholeFloats.set(this, new Set());
    wholeFloats.get(this).add(key);
  }
  return value;
}

export function isWholeFloat(holder, key) {
  return wholeFloats.get(holder)?.has(key) ?? false;
}

// data.subset as a reader means it: null "all", a fraction "25% of images", a count "10 per class".
export function subsetText(data) {
  const subset = data?.subset;
  if (subset == null) return "all";
  if (!Number.isInteger(subset) || isWholeFloat(data, "subset")) return `${significant(subset * 100, 3)}% of images`;
  return `${subset} per class`;
}
