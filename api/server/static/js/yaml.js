// Just enough YAML for the dashboard: dump a resolved spec readably, and find the line of a field path
// (from a 422's `loc`) in the text the user typed, in block or flow YAML or in JSON.

import { isWholeFloat } from "./format.js";

const PLAIN = /^[A-Za-z_][\w.\/-]*$/;
const RESERVED = /^(true|false|null|yes|no|on|off|~)$/i;

function scalar(value, holder, key) {
  if (value === null || value === undefined) return "null";
  if (isWholeFloat(holder, key)) return `${value}.0`; // subset: 1.0 (all images) is not 1 (one per class)
  if (typeof value === "string") {
    return PLAIN.test(value) && !RESERVED.test(value) ? value : JSON.stringify(value);
  }
  return String(value);
}

function isFlat(value) {
  return Array.isArray(value) && value.every((v) => v === null || typeof v !== "object");
}

export function dumpYaml(value, indent = "") {
  const lines = [];
  for (const [key, item] of Object.entries(value)) {
    if (item !== null && typeof item === "object" && !isFlat(item)) {
      if (Array.isArray(item)) {
        lines.push(`${indent}${key}:`);
        for (const entry of item) lines.push(`${indent}  - ${JSON.stringify(entry)}`);
      } else if (Object.keys(item).length === 0) {
        lines.push(`${indent}${key}: {}`);
      } else {
        lines.push(`${indent}${key}:`, dumpYaml(item, indent + "  "));
      }
    } else if (isFlat(item)) {
      lines.push(`${indent}${key}: [${item.map(scalar).join(", ")}]`);
    } else {
      lines.push(`${indent}${key}: ${scalar(item, value, key)}`);
    }
  }
  return lines.join("\n");
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

// 0-based line of the deepest key of `path` found, or -1. Numeric parts (list indexes) keep the parent line.
export function findKeyLine(text, path) {
  const lines = text.split("\n");
  let line = -1;
  let column = 0;
  for (const key of path) {
    if (typeof key === "number") continue;
    const pattern = new RegExp(`(^|[\\s{,])["']?${escapeRegExp(String(key))}["']?\\s*:`);
    const parentIndent = line < 0 ? -1 : indentOf(lines[line]);
    let hit = -1;
    for (let i = Math.max(line, 0); i < lines.length; i++) {
      const content = lines[i].replace(/\s#.*$/, "");
      if (i > line && line >= 0 && content.trim() && indentOf(content) <= parentIndent && !content.trim().startsWith("}")) {
        break; // left the parent's block
      }
      const from = i === line ? column : 0;
      const match = pattern.exec(content.slice(from));
      if (match) {
        hit = i;
        column = from + match.index + match[0].length;
        break;
      }
    }
    if (hit < 0) break;
    line = hit;
  }
  return line;
}
