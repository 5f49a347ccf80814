// A job's server-sent events (GET /jobs/{id}/events) through fetch: EventSource cannot send the bearer token.
// Calls onEvent(kind, data) per event (data parsed as JSON except for logs); resolves when the job ends,
// rejects when the stream breaks (the caller reconnects from its cursors).

import { authHeaders } from "./api.js";

export async function watchJob(id, params, onEvent, signal) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null)).toString();
  const response = await fetch(`/jobs/${id}/events?${query}`, { headers: authHeaders(), signal });
  if (!response.ok) throw new Error(`events: HTTP ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("events: the stream closed before the job ended");
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
      if (!data.length) continue; // a keep-alive comment
      const text = data.join("\n");
      onEvent(kind, kind === "log" ? text : JSON.parse(text));
      if (kind === "end") return;
    }
  }
}
