// A banner while no worker is alive (from /healthz, which reads the workers' heartbeats): queued jobs would
// otherwise just sit there with nothing on screen saying why.

const POLL_MS = 5000;

export function watchWorkers(banner) {
  async function poll() {
    try {
      const response = await fetch("/healthz");
      const health = await response.json();
      const none = Array.isArray(health.live_workers) && health.live_workers.length === 0;
      banner.hidden = !none;
      banner.textContent = none
        ? `No worker is running: queued jobs wait until one starts (vitq worker). ${health.workers || ""}`
        : "";
    } catch {
      banner.hidden = true; // the connection indicator already says the server is unreachable
    }
  }
  poll();
  return setInterval(poll, POLL_MS);
}
