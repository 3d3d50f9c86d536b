// Inference: the workers per GPU, the router's queue, its last routing decisions, the models and where each is
// loaded, and a small playground that sends one chat request and says which GPU served it and why.
// Live: GET /api/queue on every worker event (at most once a second) and every 2 s.

import {h, replace} from "../lib/dom.js";
import {timeEl} from "../lib/format.js";

export const title = "Inference";

const PRIORITIES = ["high", "normal", "low"];
const REFRESH_MS = 2000;
const MIN_GAP_MS = 1000;

/** What each X-Gpuplane-Route value means, for when the gateway sends no X-Gpuplane-Reason. */
const ROUTES = {
  "exclusive": "the request asked for this GPU (exclusive_gpu)",
  "affinity": "this GPU already had the model's group loaded",
  "least-loaded": "the least loaded GPU that can hold the model's group",
  "retry": "another worker failed; retried here",
  "cpu-fallback": "no GPU could serve; fell back to the CPU worker",
};

const STATE_TONE = {ready: "ok", loading: "info", starting: "info", draining: "warn", stopped: "bad", error: "bad"};
const CIRCUIT_TONE = {closed: "ok", half_open: "warn", open: "bad"};
const CIRCUIT_TEXT = {closed: "closed", half_open: "half open", open: "open"};

function badge(text, tone) {
  return h("span", {class: `badge${tone ? ` badge-${tone}` : ""}`}, text);
}

/** A cell labelled for phones (where each row reads "label: value"); several children travel as one block. */
function td(label, ...children) {
  const parts = children.filter((c) => c !== null && c !== undefined && c !== false);
  return h("td", {"data-label": label}, parts.length > 1 ? h("div", {class: "cell"}, parts) : parts);
}

function num(label, ...children) {
  const parts = children.filter((c) => c !== null && c !== undefined && c !== false);
  return h("td", {"data-label": label, class: "num"}, parts.length > 1 ? h("div", {class: "cell"}, parts) : parts);
}

function gpuOf(worker, multiHost) {
  return multiHost ? `${worker.host}/${worker.device}` : worker.device;
}

function seconds(value) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return "—";
  const s = Number(value);
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
}

// --------------------------------------------------------------------------- workers

function workersTable(workers) {
  if (!workers.length) return h("p", {class: "muted"}, "No workers have reported yet.");
  const multiHost = new Set(workers.map((w) => w.host)).size > 1;
  const rows = workers.map((w) => {
    const groups = w.groups_loaded.length
      ? w.groups_loaded.map((g, i) => [i ? ", " : "", g === w.current_group
        ? h("strong", {title: "current group"}, g) : g])
      : h("span", {class: "muted"}, "none");
    let eligible;
    if (!w.alive) eligible = badge("not reporting", "bad");
    else if (w.eligible) eligible = badge("eligible", "ok");
    else eligible = h("span", {}, badge("not eligible", "warn"), " ", h("span", {class: "small"}, w.why_not || ""));
    return h("tr", {"data-testid": "worker", "data-worker": w.worker_id, class: w.alive ? null : "failed"},
      td("GPU", h("strong", {class: "mono"}, gpuOf(w, multiHost)), h("div", {class: "small muted mono"}, w.worker_id)),
      td("State", badge(w.state, STATE_TONE[w.state] || "info")),
      num("In flight / slots", `${w.in_flight} / ${w.slots}`),
      num("Queue", String(w.queue_size)),
      td("Model groups", groups),
      td("Circuit", badge(CIRCUIT_TEXT[w.circuit] || w.circuit, CIRCUIT_TONE[w.circuit] || "info")),
      td("Eligible", eligible),
      num("Avg latency", w.request_count ? seconds(w.latency_avg_s) : "—"),
      num("Requests / errors", `${w.request_count} / `,
        w.error_count ? h("span", {class: "error"}, String(w.error_count)) : "0"));
  });
  return h("div", {class: "table-wrap"},
    h("table", {class: "responsive", "data-testid": "workers"},
      h("caption", {class: "sr-only"}, "Inference workers"),
      h("thead", {}, h("tr", {},
        h("th", {scope: "col"}, "GPU"), h("th", {scope: "col"}, "State"),
        h("th", {scope: "col", class: "num"}, "In flight / slots"), h("th", {scope: "col", class: "num"}, "Queue"),
        h("th", {scope: "col"}, "Model groups"), h("th", {scope: "col"}, "Circuit"),
        h("th", {scope: "col"}, "Eligible"), h("th", {scope: "col", class: "num"}, "Avg latency"),
        h("th", {scope: "col", class: "num"}, "Requests / errors"))),
      h("tbody", {}, rows)));
}

// --------------------------------------------------------------------------- router queue

function queueView(router) {
  const queued = router.queued || {};
  const total = PRIORITIES.reduce((sum, p) => sum + (queued[p] || 0), 0);
  return h("div", {"data-testid": "queue"},
    h("dl", {class: "inf-queue"},
      PRIORITIES.map((p) => h("div", {class: "inf-figure", "data-priority": p},
        h("dt", {}, `${p[0].toUpperCase()}${p.slice(1)} priority`),
        h("dd", {}, String(queued[p] || 0)))),
      h("div", {class: "inf-figure"}, h("dt", {}, "In flight"), h("dd", {}, String(router.in_flight ?? 0)))),
    h("p", {class: "small muted"},
      `${total} waiting of at most ${router.queue_limit}; policy `, h("strong", {}, router.policy || "—"),
      router.router ? [" · router ", h("span", {class: "mono"}, router.router)] : null));
}

// --------------------------------------------------------------------------- routing decisions

function queuedMs(d) {
  const ms = d.queued_ms ?? (Number.isFinite(d.queued_s) ? d.queued_s * 1000 : null);
  return ms === null || ms === undefined ? "—" : `${Math.round(ms)} ms`;
}

function decisionsView(decisions) {
  if (decisions === undefined) {
    return h("p", {class: "muted", "data-testid": "decisions"}, "This gateway does not report routing decisions yet.");
  }
  if (!decisions.length) {
    return h("p", {class: "muted", "data-testid": "decisions"},
      "No requests routed yet. Send one from the playground below.");
  }
  const multiHost = new Set(decisions.map((d) => d.host).filter(Boolean)).size > 1;
  const rows = decisions.map((d) => h("tr", {"data-testid": "decision", "data-request": d.request_id},
    td("When", timeEl(d.at)),
    td("Model", h("span", {class: "mono"}, d.model), d.group && d.group !== d.model
      ? h("div", {class: "small muted"}, d.group) : null),
    td("GPU", d.device ? h("strong", {class: "mono"}, multiHost && d.host ? `${d.host}/${d.device}` : d.device)
      : h("span", {class: "muted"}, "—")),
    td("Route", d.route ? badge(d.route, d.route === "retry" || d.route === "cpu-fallback" ? "warn" : "info") : "—"),
    td("Why", d.reason || ROUTES[d.route] || "—"),
    num("Attempts", String(d.attempts ?? 1),
      d.batch_size > 1 ? h("div", {class: "small muted"}, `batch of ${d.batch_size}`) : null),
    num("Queued", queuedMs(d))));
  return h("div", {class: "table-wrap"},
    h("table", {class: "responsive", "data-testid": "decisions"},
      h("caption", {class: "sr-only"}, "Last routing decisions, newest first"),
      h("thead", {}, h("tr", {},
        ["When", "Model", "GPU", "Route", "Why"].map((t) => h("th", {scope: "col"}, t)),
        h("th", {scope: "col", class: "num"}, "Attempts"), h("th", {scope: "col", class: "num"}, "Queued"))),
      h("tbody", {}, rows)));
}

// --------------------------------------------------------------------------- models

function modelsView(groups) {
  if (!groups.length) return h("p", {class: "muted", "data-testid": "models"}, "No model groups are configured.");
  const rows = [];
  for (const g of groups) {
    const where = (g.device_info || []).filter((d) => d.has_group);
    const loaded = where.length
      ? where.map((d, i) => [i ? " " : "", badge(d.is_current ? `${d.device} · current` : d.device,
        d.is_current ? "ok" : "info")])
      : h("span", {class: "muted"}, "not loaded");
    rows.push(h("tr", {"data-testid": "model-group", "data-group": g.group_id},
      td("Group", h("strong", {}, g.group_id)),
      td("Models", h("ul", {class: "inf-models"}, g.models.map((m) => h("li", {"data-model": m.id},
        h("span", {class: "mono"}, m.id), " ", h("span", {class: "small muted"}, m.kind, m.small ? " · small" : ""))))),
      num("VRAM", `${Number(g.vram_gb).toFixed(1)} GB`),
      num("Load time", seconds(g.load_time_s)),
      td("Loaded on", loaded)));
  }
  return h("div", {class: "table-wrap"},
    h("table", {class: "responsive", "data-testid": "models"},
      h("caption", {class: "sr-only"}, "Model groups and where they are loaded"),
      h("thead", {}, h("tr", {},
        h("th", {scope: "col"}, "Group"), h("th", {scope: "col"}, "Models"),
        h("th", {scope: "col", class: "num"}, "VRAM"), h("th", {scope: "col", class: "num"}, "Load time"),
        h("th", {scope: "col"}, "Loaded on"))),
      h("tbody", {}, rows)));
}

// --------------------------------------------------------------------------- playground

function playground(api) {
  const modelSelect = h("select", {id: "pg-model", name: "model", "data-testid": "model-select", required: true},
    h("option", {value: ""}, "Loading models…"));
  const priority = h("select", {id: "pg-priority", name: "priority", "data-testid": "priority"},
    PRIORITIES.map((p) => h("option", {value: p, selected: p === "normal"}, p)));
  const prompt = h("textarea", {id: "pg-prompt", name: "prompt", "data-testid": "prompt", rows: "3", required: true,
    placeholder: "Say hello in five words."});
  const send = h("button", {type: "submit", class: "primary", "data-testid": "send"}, "Send");
  const status = h("span", {class: "small muted", role: "status", "aria-live": "polite"});
  const result = h("div", {class: "inf-result", "aria-live": "polite"});

  async function loadModels() {
    try {
      const list = (await api.get("/v1/models")).data || [];
      const chat = list.filter((m) => !m.kind || m.kind === "chat");
      const others = list.filter((m) => m.kind && m.kind !== "chat");
      const previous = modelSelect.value;
      replace(modelSelect,
        chat.length ? h("optgroup", {label: "Chat"}, chat.map((m) => h("option", {value: m.id}, m.id))) : null,
        others.length ? h("optgroup", {label: "Other (not for chat)"},
          others.map((m) => h("option", {value: m.id}, `${m.id} (${m.kind})`))) : null);
      if (!list.length) replace(modelSelect, h("option", {value: ""}, "No models"));
      const loaded = chat.find((m) => (m.loaded_on_devices || []).length);
      if (previous && list.some((m) => m.id === previous)) modelSelect.value = previous;
      else if (loaded) modelSelect.value = loaded.id;
    } catch (err) {
      replace(modelSelect, h("option", {value: ""}, "Models unavailable"));
      replace(result, h("p", {class: "notice notice-bad", role: "alert"}, `Could not list the models: ${err.message}`));
    }
  }

  async function submit(event) {
    event.preventDefault();
    const model = modelSelect.value;
    const content = prompt.value.trim();
    if (!model || !content) {
      replace(result, h("p", {class: "notice notice-warn", role: "alert"},
        !model ? "Choose a model." : "Write a prompt."));
      (!model ? modelSelect : prompt).focus();
      return;
    }
    send.disabled = true;
    status.textContent = "Waiting for the answer…";
    const started = performance.now();
    try {
      const {data, headers} = await api.call("POST", "/v1/chat/completions", {
        json: {model, messages: [{role: "user", content}], max_tokens: 64, priority: priority.value},
      });
      const ms = Math.round(performance.now() - started);
      const text = data?.choices?.[0]?.message?.content ?? data?.choices?.[0]?.text ?? "";
      const gpu = headers.get("X-Gpuplane-Gpu") || "an unknown device";
      const worker = headers.get("X-Gpuplane-Worker");
      const route = headers.get("X-Gpuplane-Route");
      const reason = headers.get("X-Gpuplane-Reason") || ROUTES[route] || "the router gave no reason";
      const queued = headers.get("X-Gpuplane-Queued-Ms");
      replace(result,
        h("h3", {}, "Answer"),
        h("blockquote", {class: "inf-answer", "data-testid": "answer"}, text || h("span", {class: "muted"}, "(empty)")),
        h("dl", {class: "facts"},
          h("dt", {}, "Served by"),
          h("dd", {"data-testid": "served-by"}, h("strong", {class: "mono"}, gpu),
            worker ? [" · worker ", h("span", {class: "mono"}, worker)] : null),
          h("dt", {}, "Why"),
          h("dd", {"data-testid": "why"}, route ? [badge(route, "info"), " "] : null, reason),
          h("dt", {}, "Latency"),
          h("dd", {"data-testid": "latency"}, `${ms} ms in the browser`,
            queued !== null ? `, ${queued} ms of it queued in the router` : "")));
      status.textContent = `Answered in ${ms} ms.`;
    } catch (err) {
      const ms = Math.round(performance.now() - started);
      replace(result, h("div", {class: "notice notice-bad", role: "alert", "data-testid": "answer-error"},
        h("strong", {}, err.status ? `Error ${err.status}: ` : "Error: "), err.message));
      status.textContent = `Failed after ${ms} ms.`;
    } finally {
      send.disabled = false;
    }
  }

  const form = h("form", {class: "inf-playground", onsubmit: submit, "aria-labelledby": "pg-title"},
    h("div", {class: "inf-row"},
      h("div", {class: "field"}, h("label", {for: "pg-model"}, "Model"), modelSelect),
      h("div", {class: "field"}, h("label", {for: "pg-priority"}, "Priority"), priority)),
    h("div", {class: "field"}, h("label", {for: "pg-prompt"}, "Prompt"), prompt),
    h("div", {class: "actions"}, send, status,
      h("span", {class: "small muted"}, "Up to 64 tokens; a model not loaded yet takes its load time first.")));
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  const panel = h("section", {class: "panel", "aria-labelledby": "pg-title"},
    h("div", {class: "panel-head"}, h("h2", {id: "pg-title"}, "Playground")), form, result);
  return {panel, loadModels};
}

// --------------------------------------------------------------------------- the page

export async function mount(root, {api, events}) {
  const notice = h("div", {role: "status", "aria-live": "polite"});
  const workersBody = h("div", {}, h("p", {class: "muted"}, "Loading…"));
  const queueBody = h("div", {}, h("p", {class: "muted"}, "Loading…"));
  const decisionsBody = h("div", {}, h("p", {class: "muted"}, "Loading…"));
  const modelsBody = h("div", {}, h("p", {class: "muted"}, "Loading…"));
  const updated = h("span", {class: "small muted"});
  const pg = playground(api);

  const section = (id, heading, body, extra) => h("section", {class: "panel", "aria-labelledby": id},
    h("div", {class: "panel-head"}, h("h2", {id}, heading), extra || null), body);

  replace(root,
    h("h1", {class: "sr-only"}, "Inference"),
    notice,
    h("div", {class: "inf-top"},
      section("inf-workers", "Workers", workersBody, updated),
      section("inf-queue", "Router queue", queueBody)),
    pg.panel,
    section("inf-decisions", "Last routing decisions", decisionsBody,
      h("span", {class: "small muted"}, "newest first")),
    section("inf-models", "Models", modelsBody));

  const last = {queue: "", decisions: "", workers: "", models: ""};
  let running = false;
  let lastStart = 0;
  let trailing = null;
  let stopped = false;

  function render(key, body, data, view) {
    const text = JSON.stringify(data);
    if (text === last[key]) return;
    last[key] = text;
    replace(body, view(data));
  }

  async function refresh() {
    if (stopped) return;
    if (running) { schedule(); return; }
    running = true;
    lastStart = Date.now();
    try {
      const [queue, models] = await Promise.allSettled([api.get("/api/queue"), api.get("/api/models")]);
      if (stopped) return;
      if (queue.status === "fulfilled") {
        const q = queue.value;
        render("workers", workersBody, q.workers || [], workersTable);
        render("queue", queueBody, q.router || {}, queueView);
        render("decisions", decisionsBody, q.decisions, decisionsView);
        replace(notice);
        updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
      } else {
        const err = queue.reason;
        replace(notice, h("p", {class: "notice notice-bad"},
          err.status === 503 ? `No router is answering: ${err.message}` : `Could not read the queue: ${err.message}`));
      }
      if (models.status === "fulfilled") render("models", modelsBody, models.value.model_groups || [], modelsView);
    } finally {
      running = false;
    }
  }

  /** At most one refresh a second: a worker event inside the gap is folded into one refresh at its end. */
  function schedule() {
    if (stopped || trailing || document.hidden) return;  // a hidden tab catches up when shown again
    const wait = Math.max(0, lastStart + MIN_GAP_MS - Date.now());
    if (wait === 0 && !running) { refresh(); return; }
    trailing = setTimeout(() => { trailing = null; refresh(); }, Math.max(wait, running ? 100 : 0));
  }

  const timer = setInterval(schedule, REFRESH_MS);
  document.addEventListener("visibilitychange", schedule);
  const offWorker = events.on("worker", schedule);
  const offResync = events.on("resync", schedule);
  const off = () => { offWorker(); offResync(); };
  refresh();
  pg.loadModels();

  return () => {
    stopped = true;
    clearInterval(timer);
    document.removeEventListener("visibilitychange", schedule);
    if (trailing) clearTimeout(trailing);
    off();
  };
}
