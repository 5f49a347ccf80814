// fetch() wrapper: JSON in and out, and one error type that keeps FastAPI's `detail` for the submit form.

import { jsonReviver } from "./format.js";

export class ApiError extends Error {
  constructor(status, detail, message) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

const TOKEN_KEY = "vitq-token"; // a server with authentication wants `Authorization: Bearer <token>`

export function authHeaders() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { authorization: `Bearer ${token}` } : {};
}

export async function api(path, { method = "GET", body, contentType } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      body,
      headers: { ...authHeaders(), ...(contentType ? { "content-type": contentType } : {}) },
    });
  } catch (err) {
    setConnection(false);
    throw new ApiError(0, null, "cannot reach the vitq server");
  }
  setConnection(true);
  if (response.status === 401) askForToken();
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const data = isJson ? JSON.parse(await response.text(), jsonReviver) : await response.text();
  if (!response.ok) {
    const detail = isJson ? data.detail : data;
    throw new ApiError(response.status, detail, describe(response.status, detail));
  }
  return data;
}

function describe(status, detail) {
  if (Array.isArray(detail)) return `${detail.length} validation error(s)`;
  if (typeof detail === "string" && detail) return detail;
  return `HTTP ${status}`;
}

function setConnection(ok) {
  const el = document.getElementById("connection");
  if (!el) return;
  el.textContent = ok ? "" : "server unreachable — retrying";
  el.classList.toggle("down", !ok);
}

// A file behind authentication: a plain link cannot carry the token, so fetch it and save the blob.
export async function download(url, fileName) {
  const response = await fetch(url, { headers: authHeaders() });
  if (!response.ok) throw new ApiError(response.status, null, `download failed: HTTP ${response.status}`);
  const href = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href, download: fileName });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(href), 1000);
}

// The server refused the request's token (or there was none): a bar under the header asks for one, kept in
// this browser's local storage.
function askForToken() {
  if (document.getElementById("token-bar")) return;
  const input = Object.assign(document.createElement("input"), {
    type: "password", placeholder: "API token", autocomplete: "off",
  });
  input.setAttribute("aria-label", "API token");
  const form = document.createElement("form");
  form.id = "token-bar";
  form.className = "token-bar";
  const save = Object.assign(document.createElement("button"), { type: "submit", className: "primary", textContent: "Save" });
  const text = document.createElement("span");
  text.textContent = localStorage.getItem(TOKEN_KEY)
    ? "The server refused this browser's API token. Paste another:"
    : "This server needs an API token (vitq token create, or ask an admin):";
  form.append(text, input, save);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!input.value.trim()) return;
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    location.reload();
  });
  document.querySelector(".topbar").after(form);
}
