// How numbers and times read in the console: GB with one decimal (as the design shows them), times relative.

/** 21.7 -> "21.7 GB"; null -> "—". */
export function gb(value) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return "—";
  return `${Number(value).toFixed(1)} GB`;
}

/** MiB as the detector reports them -> "19.3 GB" (1 GB = 1024 MiB, as nvidia-smi's users read it). */
export function gbFromMb(mb) {
  if (mb === null || mb === undefined) return "—";
  return gb(Number(mb) / 1024);
}

export function percent(value) {
  return value === null || value === undefined ? "—" : `${Math.round(Number(value))}%`;
}

/** "just now", "12 s ago", "5 min ago", "3 h ago", "2 d ago" (or "in 5 s" for the future). */
export function ago(when, now = Date.now()) {
  if (!when) return "—";
  const then = typeof when === "number" ? when : Date.parse(when);
  if (!Number.isFinite(then)) return "—";
  const seconds = Math.round((now - then) / 1000);
  const future = seconds < 0;
  const s = Math.abs(seconds);
  let text;
  if (s < 2) return "just now";
  if (s < 60) text = `${s} s`;
  else if (s < 3600) text = `${Math.floor(s / 60)} min`;
  else if (s < 86400) text = `${Math.floor(s / 3600)} h`;
  else text = `${Math.floor(s / 86400)} d`;
  return future ? `in ${text}` : `${text} ago`;
}

/** A <time> element showing `ago(when)` with the exact time as its title; re-rendered by `refreshTimes`. */
export function timeEl(when) {
  const node = document.createElement("time");
  if (when) {
    node.dateTime = when;
    node.title = new Date(when).toLocaleString();
  }
  node.textContent = ago(when);
  node.dataset.relative = "1";
  return node;
}

/** Bring every relative time on the page up to date (called once a second by the shell). */
export function refreshTimes(root = document) {
  for (const node of root.querySelectorAll("time[data-relative]")) node.textContent = ago(node.dateTime);
}

/** "GPU 0", or "box-a GPU 0" when several hosts are shown. */
export function gpuLabel(index, host, multiHost = false) {
  return multiHost && host ? `${host} GPU ${index}` : `GPU ${index}`;
}
