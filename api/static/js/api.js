// fetch() wrapper: JSON in and out, and one error type that keeps FastAPI's `detail` for the submit form.

export class ApiError extends Error {
  constructor(status, detail, message) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

export async function api(path, { method = "GET", body, contentType } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      body,
      headers: contentType ? { "content-type": contentType } : {},
    });
  } catch (err) {
    setConnection(false);
    throw new ApiError(0, null, "cannot reach the vitq server");
  }
  setConnection(true);
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const data = isJson ? await response.json() : await response.text();
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
