// One server-sent-events stream (/api/events) for the whole console: the NATS events the pages show live.
// Event names: inventory, gpu_health, config, progress, worker, audit, ready. Each `data` is the NATS
// message's JSON as published (its `type` says the contract and version). Pages also hear `resync`: the
// stream has just (re)opened (`ready`), or the server dropped events for it (`resync`); what happened
// meanwhile was not seen live, so a page that shows live lists re-reads them over HTTP.

const listeners = new Map();
let source = null;
let connected = false;
const statusListeners = new Set();

function dispatch(kind, event) {
  let message;
  try { message = JSON.parse(event.data); } catch { return; }
  for (const fn of listeners.get(kind) || []) fn(message);
}

function ensure() {
  if (source) return;
  source = new EventSource("/api/events");
  for (const kind of ["inventory", "gpu_health", "config", "progress", "worker", "audit"]) {
    source.addEventListener(kind, (event) => dispatch(kind, event));
  }
  for (const gap of ["ready", "resync"]) {
    source.addEventListener(gap, () => { for (const fn of listeners.get("resync") || []) fn(null); });
  }
  source.addEventListener("open", () => setConnected(true));
  source.addEventListener("error", () => setConnected(false));  // EventSource reconnects by itself
}

function setConnected(value) {
  if (connected === value) return;
  connected = value;
  for (const fn of statusListeners) fn(value);
}

export const events = {
  /** Call `fn(message)` for each event of `kind`; returns the function that stops it. */
  on(kind, fn) {
    ensure();
    if (!listeners.has(kind)) listeners.set(kind, new Set());
    listeners.get(kind).add(fn);
    return () => listeners.get(kind).delete(fn);
  },
  /** Call `fn(connected)` when the stream drops or comes back. */
  onStatus(fn) {
    ensure();
    statusListeners.add(fn);
    fn(connected);
    return () => statusListeners.delete(fn);
  },
  close() { if (source) source.close(); source = null; setConnected(false); },
};
