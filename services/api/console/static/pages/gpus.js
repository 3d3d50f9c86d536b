// GPU Configuration: the detected GPUs (live), the strategy, each service's GPU and VRAM budget, a preview of
// what would change, saving, and applying with live per-service progress, drift and rollback.
//
// Everything comes from the public API (/api/system/gpus, /api/system/gpu-config[/preview|/apply|/rollback|
// /status]) and the events stream (inventory, gpu_health, config, progress). Texts from the API only ever go
// into the page as text (lib/dom.js `h`).

import {ApiError} from "../lib/api.js";
import {bar, h, replace} from "../lib/dom.js";
import {gb, gbFromMb, percent, timeEl} from "../lib/format.js";

export const title = "GPU Configuration";

const GPU_POLL_MS = 10_000;  // fallback when an inventory event is missed; events show a change at once
const RUN_POLL_MS = 1_000;   // while a run is active
const ACTIVE_RUN = new Set(["queued", "running", "rolling_back"]);
const STRATEGY_LABELS = {
  manual: "Manual",
  vram_based: "VRAM-based",
  latency_optimized: "Latency-optimized",
  isolation_first: "Isolation-first",
  balanced: "Balanced",
};
const SERVICE_TONE = {pending: "info", recreating: "warn", healthy: "ok", failed: "bad", restored: "info"};
const RUN_TONE = {queued: "info", running: "info", rolling_back: "warn", succeeded: "ok", failed: "bad",
                  rolled_back: "warn"};
const AUTO = "auto";

function shortName(name) {
  return String(name || "").replace(/^NVIDIA\s+/i, "");
}

function gpuKey(host, index) {
  return `${host ?? ""}/${index}`;
}

function oneDecimal(value) {
  return Number(value).toFixed(1);
}

/** A table cell whose content stays one block (table.responsive lays cells out as label + value on phones). */
function td(label, attrs, ...children) {
  return h("td", {"data-label": label, ...attrs}, h("div", {class: "gp-cell"}, ...children));
}

function badge(text, tone, attrs = {}) {
  return h("span", {class: tone ? `badge badge-${tone}` : "badge", ...attrs}, text);
}

export async function mount(root, {api, events}) {
  const state = {
    fleet: null,              // GET /api/system/gpus
    fleetError: null,         // why the inventory is not there (503 before the first one)
    sequences: new Map(),     // host -> newest inventory sequence shown
    config: null,             // GET /api/system/gpu-config
    configError: null,
    strategy: null,           // the strategy chosen in the form
    form: new Map(),          // service -> {gpus: "auto" | [gpu keys], budget: string, budgetTouched: bool}
    multi: new Set(),         // services that take several GPUs (checkboxes instead of a select)
    adjustable: new Set(),    // services with an adjustable VRAM budget
    plan: null,               // the latest preview (PlanPreviewOut), or null: the table shows the saved config
    dirty: false,
    fieldErrors: new Map(),   // service -> {gpu?: msg, budget?: msg}
    formNotice: null,         // {tone, text} under the buttons
    status: null,             // GET /api/system/gpu-config/status
    statusError: null,
    statusLoaded: false,      // the first GET status answered (or failed)
    applyProblem: null,       // a 503 detail from POST apply/rollback
    runNotice: null,          // {tone, text} in the apply panel (409, rollback refused, ...)
    busy: false,
  };
  let alive = true;
  const timers = [];
  let runTimer = null;
  let previewSeq = 0;

  // ---- layout ---------------------------------------------------------------------------------------
  const gpuBody = h("div", {class: "gpu-body"});
  const gpuMeta = h("p", {class: "muted small gpu-meta"});
  const rescanButton = h("button", {type: "button", "data-testid": "rescan", onclick: rescan}, "Re-scan GPUs");
  const noGpus = h("div", {class: "no-gpus-slot"});
  const strategyBox = h("div", {class: "strategy-box"});
  const tableBox = h("div", {class: "table-wrap"});
  const warningsBox = h("div", {class: "warnings-box"});
  const previewButton = h("button", {type: "button", "data-testid": "preview", onclick: preview}, "Preview Changes");
  const saveButton = h("button", {type: "button", "data-testid": "save", class: "primary", onclick: save}, "Save");
  const applyButton = h("button", {type: "button", "data-testid": "apply", onclick: apply},
    "Apply & Restart Services");
  const formNoticeBox = h("div", {class: "form-notice", role: "status", "aria-live": "polite"});
  const previewPanel = h("section", {class: "panel preview-panel", "aria-labelledby": "gpus-preview-h", hidden: true});
  const applyBox = h("div", {class: "apply-box", "aria-live": "polite"});

  replace(root,
    h("h1", {}, "GPU Configuration"),
    noGpus,
    h("section", {class: "panel", "aria-labelledby": "gpus-detected-h"},
      h("div", {class: "panel-head"}, h("h2", {id: "gpus-detected-h"}, "Detected GPUs"), rescanButton),
      gpuMeta,
      gpuBody),
    h("section", {class: "panel", "aria-labelledby": "gpus-assign-h"},
      h("div", {class: "panel-head"}, h("h2", {id: "gpus-assign-h"}, "Assignment strategy")),
      strategyBox,
      h("h2", {class: "gpus-subhead"}, "Service assignments"),
      tableBox,
      warningsBox,
      h("div", {class: "actions"}, previewButton, saveButton, applyButton),
      formNoticeBox),
    previewPanel,
    h("section", {class: "panel", "aria-labelledby": "gpus-apply-h"},
      h("div", {class: "panel-head"}, h("h2", {id: "gpus-apply-h"}, "Apply status")),
      applyBox),
  );

  // ---- GPUs ------------------------------------------------------------------------------------------
  async function loadGpus() {
    try {
      const fleet = await api.get("/api/system/gpus");
      if (!alive) return;
      state.fleetError = null;
      setFleet(fleet);
    } catch (err) {
      if (!alive) return;
      state.fleetError = err.message;
      renderGpus();
      renderControls();
    }
  }

  function setFleet(fleet) {
    // Keep the newest per host: a poll answered before an event arrived must not undo it.
    const hosts = [];
    let gpus = [];
    for (const info of fleet.hosts || []) {
      const shown = state.sequences.get(info.host);
      const current = state.fleet && (state.fleet.hosts || []).find((x) => x.host === info.host);
      if (shown !== undefined && info.sequence < shown && current) {
        hosts.push(current);
        gpus = gpus.concat(state.fleet.gpus.filter((g) => g.host === info.host));
      } else {
        state.sequences.set(info.host, info.sequence);
        hosts.push(info);
        gpus = gpus.concat((fleet.gpus || []).filter((g) => g.host === info.host));
      }
    }
    state.fleet = {...fleet, hosts, gpus};
    renderGpus();
    renderControls();
    refreshGpuOptions();
  }

  function onInventory(inv) {
    if (!inv || !inv.host) return;
    const shown = state.sequences.get(inv.host);
    if (shown !== undefined && (inv.sequence ?? 0) < shown) return;
    state.sequences.set(inv.host, inv.sequence ?? 0);
    const fleet = state.fleet || {gpus: [], hosts: [], source: inv.source, message: ""};
    const hostInfo = {
      host: inv.host, source: inv.source, gpu_count: (inv.gpus || []).length, detected_at: inv.detected_at,
      sequence: inv.sequence, problems: inv.problems || [], fleet_file: inv.fleet_file,
    };
    const hosts = fleet.hosts.some((x) => x.host === inv.host)
      ? fleet.hosts.map((x) => (x.host === inv.host ? hostInfo : x))
      : [...fleet.hosts, hostInfo];
    const gpus = [];
    for (const x of hosts) {
      if (x.host === inv.host) gpus.push(...(inv.gpus || []).map((g) => ({...g, host: inv.host})));
      else gpus.push(...fleet.gpus.filter((g) => g.host === x.host));
    }
    const sources = new Set(hosts.map((x) => x.source));
    const source = sources.size === 1 ? [...sources][0] : "mixed";
    state.fleetError = null;
    state.fleet = {...fleet, gpus, hosts, source, message: gpus.length ? fleet.message : (fleet.message || "")};
    renderGpus();
    renderControls();
    refreshGpuOptions();
  }

  function onGpuHealth(message) {
    if (!state.fleet || !message || !message.change) return;
    const {change, host} = message;
    const healthy = change.kind === "recovered" ? true : change.kind === "unhealthy" ? false : null;
    if (healthy === null) {  // appeared / disappeared: the inventory that follows says the rest
      loadGpus();
      return;
    }
    state.fleet = {
      ...state.fleet,
      gpus: state.fleet.gpus.map((g) => (g.host === host && (g.uuid === change.uuid || g.index === change.index)
        ? {...g, healthy, health_reason: healthy ? null : change.reason ?? g.health_reason}
        : g)),
    };
    renderGpus();
    refreshGpuOptions();
  }

  // The orchestrator names GPUs as the override does (uuids by default): show the index people know.
  function gpuNumber(id) {
    const bare = String(id).replace(/^nvidia\.com\/gpu=/, "");
    const gpu = (state.fleet?.gpus || []).find((g) => g.uuid === bare);
    if (!gpu) return bare;
    return multiHost() ? `${gpu.host}:${gpu.index}` : String(gpu.index);
  }

  function deviceNames(ids) {
    return (ids || []).length ? `GPU ${ids.map(gpuNumber).join(", ")}` : "none";
  }

  function withGpuNames(text) {
    return String(text).replace(/GPU-[0-9a-fA-F-]{8,}/g, (uuid) => gpuNumber(uuid));
  }

  function multiHost() {
    return !!state.fleet && state.fleet.hosts.length > 1;
  }

  function gpuName(host, index) {
    return multiHost() ? `${host} GPU ${index}` : `GPU ${index}`;
  }

  function noGpusDetected() {
    return !!state.fleet && state.fleet.gpus.length === 0;
  }

  function renderGpus() {
    replace(noGpus);
    if (state.fleetError && !state.fleet) {
      replace(gpuMeta);
      replace(gpuBody, h("div", {class: "notice notice-warn"}, "GPU inventory not available yet: ", state.fleetError));
      return;
    }
    if (!state.fleet) {
      replace(gpuBody, h("p", {class: "muted"}, "Loading…"));
      return;
    }
    const fleet = state.fleet;
    if (fleet.gpus.length === 0) {
      replace(noGpus, h("div", {class: "notice notice-bad no-gpus", "data-testid": "no-gpus", role: "alert"},
        h("strong", {class: "no-gpus-title"}, "No GPUs detected"),
        fleet.message ? h("div", {}, fleet.message) : null,
        h("div", {class: "small"}, "Every control below is disabled until a GPU is found. Check the driver ",
          "(nvidia-smi) and the container toolkit, then use “Re-scan GPUs”."),
        ...fleet.hosts.flatMap((x) => (x.problems || []).map((p) => h("div", {class: "small"}, `${x.host}: ${p}`)))));
    }
    const multi = fleet.hosts.length > 1;
    replace(gpuMeta,
      multi ? `${fleet.gpus.length} GPUs on ${fleet.hosts.length} hosts · ` : "",
      fleet.message || "");
    const groups = fleet.hosts.map((info) => {
      const gpus = fleet.gpus.filter((g) => g.host === info.host).sort((a, b) => a.index - b.index);
      const simulated = info.source === "simulated";
      const head = h("div", {class: "host-head"},
        multi ? h("h3", {}, info.host) : null,
        h("span", {class: "muted small"},
          multi ? "" : `${info.host} · `,
          `${info.source} · detected `, timeEl(info.detected_at)),
        simulated ? badge("simulated", "info") : null,
        info.fleet_file ? h("span", {class: "muted small mono"}, info.fleet_file) : null);
      const problems = (info.problems || []).length
        ? h("ul", {class: "warnings"}, info.problems.map((p) => h("li", {}, p)))
        : null;
      return h("div", {class: "host-group", "data-host": info.host},
        head, problems,
        gpus.length
          ? h("div", {class: "cards"}, gpus.map((g) => gpuCard(g, simulated, multi)))
          : h("p", {class: "muted small"}, "No GPUs on this host."));
    });
    replace(gpuBody, groups);
  }

  function gpuCard(g, simulated, multi) {
    const used = g.vram_used_mb / 1024;
    const total = g.vram_total_mb / 1024;
    const fraction = total > 0 ? used / total : 0;
    const tone = fraction > 0.9 ? "bad" : fraction > 0.75 ? "warn" : "ok";
    const usedText = `${oneDecimal(used)} / ${oneDecimal(total)} GB used`;
    const power = g.power_draw_w == null && g.power_limit_w == null ? "—"
      : `${g.power_draw_w == null ? "—" : Math.round(g.power_draw_w)} / ${g.power_limit_w == null ? "—"
        : Math.round(g.power_limit_w)} W`;
    const peers = (g.nvlink_peers || []).length ? g.nvlink_peers.map((i) => `GPU ${i}`).join(", ") : "none";
    return h("article", {
      class: g.healthy ? "card gpu-card" : "card gpu-card unhealthy",
      "data-testid": "gpu-card", "data-gpu-index": g.index, "data-host": g.host,
      "data-healthy": g.healthy ? "true" : "false",
      "aria-label": `${multi ? `${g.host} ` : ""}GPU ${g.index}: ${g.name}`,
    },
      h("h3", {},
        h("span", {}, `GPU ${g.index}`),
        h("span", {class: "gpu-name"}, g.name),
        g.healthy ? badge("healthy", "ok", {"data-testid": "gpu-health"})
          : badge("unhealthy", "bad", {"data-testid": "gpu-health"}),
        simulated ? badge("simulated", "info") : null),
      h("div", {class: "gpu-vram"}, h("span", {class: "gpu-vram-text"}, usedText),
        h("span", {class: "muted small"}, `${gbFromMb(g.vram_free_mb)} free`)),
      bar(fraction, `GPU ${g.index} VRAM: ${usedText}`, tone),
      !g.healthy ? h("p", {class: "error gpu-reason"}, g.health_reason || "Reported unhealthy.") : null,
      h("dl", {class: "facts"},
        h("dt", {}, "Utilization"), h("dd", {}, percent(g.utilization_percent)),
        h("dt", {}, "Temperature"), h("dd", {}, g.temperature_c == null ? "—" : `${Math.round(g.temperature_c)} °C`),
        h("dt", {}, "Power"), h("dd", {}, power),
        h("dt", {}, "Compute capability"), h("dd", {}, g.compute_capability || "—"),
        h("dt", {}, "NVLink peers"), h("dd", {}, peers)));
  }

  async function rescan() {
    rescanButton.disabled = true;
    rescanButton.textContent = "Re-scanning…";
    try {
      const fleet = await api.send("POST", "/api/system/gpu-config/detect");
      if (!alive) return;
      state.fleetError = null;
      state.sequences.clear();  // a rescan answers with what is true now
      setFleet(fleet);
    } catch (err) {
      if (!alive) return;
      state.fleetError = err.message;
      renderGpus();
      replace(gpuMeta, h("span", {class: "error"}, `Re-scan failed: ${err.message}`));
    } finally {
      if (alive) {
        rescanButton.disabled = false;
        rescanButton.textContent = "Re-scan GPUs";
      }
    }
  }

  // ---- configuration form ------------------------------------------------------------------------------
  async function loadConfig() {
    try {
      const config = await api.get("/api/system/gpu-config");
      if (!alive) return;
      state.configError = null;
      setConfig(config);
    } catch (err) {
      if (!alive) return;
      state.configError = err.message;
      replace(tableBox, h("div", {class: "notice notice-bad"}, `Could not load the configuration: ${err.message}`));
      renderControls();
    }
  }

  function setConfig(config) {
    state.config = config;
    state.strategy = config.strategy;
    state.plan = null;
    state.dirty = false;
    state.fieldErrors = new Map();
    state.form = new Map();
    for (const a of config.assignments || []) {
      noteAssignment(a);
      state.form.set(a.service, formEntry(a, a.pinned || config.strategy === "manual"));
    }
    renderStrategies();
    renderTable();
    renderWarnings();
    renderPreview();
    renderControls();
  }

  function noteAssignment(a) {
    if ((a.gpu_indices || []).length > 1) state.multi.add(a.service);
    if (a.budget_adjustable || a.vram_budget_gb != null || a.vram_budget_override != null) {
      state.adjustable.add(a.service);
    }
  }

  function formEntry(a, keepGpu) {
    return {
      gpus: keepGpu && (a.gpu_indices || []).length ? a.gpu_indices.map((i) => gpuKey(a.host, i)) : AUTO,
      budget: a.vram_budget_override != null ? String(a.vram_budget_override) : "",
      budgetTouched: a.vram_budget_override != null,
    };
  }

  /** The assignments shown: the latest preview's, else the saved configuration's. */
  function shownAssignments() {
    return (state.plan || state.config || {}).assignments || [];
  }

  function shownWarnings() {
    return (state.plan || state.config || {}).warnings || [];
  }

  function warningsFor(service) {
    const source = state.plan || state.config || {};
    if (source.warnings_by_service) return source.warnings_by_service[service] || [];
    return (source.warnings || []).filter((w) => w.includes(service));
  }

  function renderStrategies() {
    const config = state.config;
    if (!config) return;
    const options = (config.strategies || []).map((s) => {
      const input = h("input", {
        type: "radio", name: "strategy", value: s.name, checked: s.name === state.strategy,
        onchange: () => chooseStrategy(s.name),
      });
      return h("label", {"data-strategy": s.name}, input,
        h("strong", {}, STRATEGY_LABELS[s.name] || s.name, s.recommended ? " (Recommended)" : ""),
        h("span", {class: "muted"}, s.description));
    });
    const saved = config.saved
      ? h("p", {class: "muted small"}, `Saved revision ${config.revision} (${STRATEGY_LABELS[config.strategy]
          || config.strategy}), `, timeEl(config.saved_at))
      : h("p", {class: "muted small"}, "Not saved yet: the table shows the default plan.");
    replace(strategyBox,
      h("fieldset", {class: "strategies"}, h("legend", {class: "sr-only"}, "Assignment strategy"), options),
      saved,
      config.message ? h("div", {class: "notice notice-warn"}, config.message) : null);
  }

  function chooseStrategy(name) {
    state.strategy = name;
    state.dirty = true;
    if (name === "manual") {
      // Manual keeps every choice and fixes the services left on Auto where the current plan puts them.
      for (const a of shownAssignments()) {
        const entry = state.form.get(a.service);
        if (entry && entry.gpus === AUTO && (a.gpu_indices || []).length) {
          entry.gpus = a.gpu_indices.map((i) => gpuKey(a.host, i));
        }
      }
    } else {
      // Any other strategy places every service itself: choices go back to Auto (budgets typed stay).
      for (const entry of state.form.values()) entry.gpus = AUTO;
    }
    renderTable();
    preview();
  }

  function gpuOptionText(g) {
    return `${gpuName(g.host, g.index)} · ${shortName(g.name)} (${gbFromMb(g.vram_free_mb)} free)${
      g.healthy ? "" : " · unhealthy"}`;
  }

  function gpuControl(a, entry) {
    const gpus = state.fleet ? state.fleet.gpus : [];
    const service = a.service;
    const errors = state.fieldErrors.get(service) || {};
    if (state.multi.has(service)) {
      const chosen = entry.gpus === AUTO ? [] : entry.gpus;
      const boxes = gpus.map((g) => {
        const key = gpuKey(g.host, g.index);
        return h("label", {class: "gpu-check"},
          h("input", {type: "checkbox", value: key, checked: chosen.includes(key),
                      "aria-label": `${gpuName(g.host, g.index)} for ${service}`,
                      "data-gpu-option": key,
                      onchange: (event) => {
                        const picked = [...event.target.closest("fieldset").querySelectorAll("input:checked")]
                          .map((x) => x.value);
                        entry.gpus = picked.length ? picked : AUTO;
                        edited(service, "gpu");
                      }}),
          h("span", {"data-option-text": key}, gpuOptionText(g)));
      });
      return h("fieldset", {class: "gpu-multi", "data-testid": "gpu-select", "aria-label": `GPUs for ${service}`,
                            "aria-invalid": errors.gpu ? "true" : null},
        h("legend", {class: "small muted"}, "GPUs (none checked: Auto)"), boxes);
    }
    const current = entry.gpus === AUTO ? AUTO : entry.gpus[0];
    const select = h("select", {
      "data-testid": "gpu-select", "aria-label": `GPU for ${service}`, "aria-invalid": errors.gpu ? "true" : null,
      onchange: (event) => {
        entry.gpus = event.target.value === AUTO ? AUTO : [event.target.value];
        edited(service, "gpu");
      },
    },
    h("option", {value: AUTO}, "Auto"),
    gpus.map((g) => h("option", {value: gpuKey(g.host, g.index), "data-option-text": gpuKey(g.host, g.index)},
      gpuOptionText(g))));
    // A GPU the config names but the detector no longer reports stays selectable, so nothing is lost silently.
    if (current !== AUTO && !gpus.some((g) => gpuKey(g.host, g.index) === current)) {
      const [host, index] = current.split("/");
      select.append(h("option", {value: current}, `${gpuName(host, index)} (not detected)`));
    }
    select.value = current;
    return select;
  }

  /** Update the "(x GB free)" texts in the selects without rebuilding them (the user may be choosing). */
  function refreshGpuOptions() {
    if (!state.fleet) return;
    for (const g of state.fleet.gpus) {
      const key = gpuKey(g.host, g.index);
      for (const node of tableBox.querySelectorAll("[data-option-text]")) {
        if (node.dataset.optionText === key) node.textContent = gpuOptionText(g);
      }
    }
  }

  function plannedText(a) {
    if (!(a.gpu_indices || []).length) return "not placed";
    return a.gpu_indices.map((i) => gpuName(a.host, i)).join(" + ");
  }

  function renderTable() {
    const config = state.config;
    if (!config) return;
    const rows = shownAssignments().map((a) => {
      if (!state.form.has(a.service)) state.form.set(a.service, formEntry(a, false));
      noteAssignment(a);
      const entry = state.form.get(a.service);
      const errors = state.fieldErrors.get(a.service) || {};
      const rowWarnings = warningsFor(a.service);
      // "Adjusted": the planner lowered the budget to fit; a budget the user typed is theirs, not adjusted.
      const adjusted = a.vram_budget_override == null && a.vram_budget_gb != null
        && a.vram_budget_gb < a.vram_estimate_gb;
      let budgetCell = h("span", {class: "muted"}, "—");
      if (state.adjustable.has(a.service)) {
        const input = h("input", {
          type: "number", step: "0.1", min: "0.1", max: "4096", inputmode: "decimal",
          class: "budget-input", "data-testid": "budget-input",
          "aria-label": `VRAM budget for ${a.service} in GB`,
          "aria-invalid": errors.budget ? "true" : null,
          placeholder: a.vram_budget_gb != null ? oneDecimal(a.vram_budget_gb) : oneDecimal(a.vram_estimate_gb),
          value: entry.budgetTouched ? entry.budget : (a.vram_budget_gb != null ? oneDecimal(a.vram_budget_gb) : ""),
          oninput: (event) => {
            entry.budget = event.target.value;
            entry.budgetTouched = true;
            edited(a.service, "budget");
          },
        });
        budgetCell = h("div", {class: "budget-cell"},
          h("span", {class: "budget-field"}, input, h("span", {class: "muted"}, "GB")),
          adjusted ? badge("Adjusted", "warn", {title: `Lowered from ${gb(a.vram_estimate_gb)} to ${gb(a.vram_budget_gb)}`})
            : a.vram_budget_override != null ? badge("Your budget", "info", {title: `Estimate ${gb(a.vram_estimate_gb)}`})
              : null,
          errors.budget ? h("div", {class: "field-error", role: "alert"}, errors.budget) : null);
      }
      const gpuCell = h("div", {class: "gpu-cell"},
        gpuControl(a, entry),
        h("div", {class: "muted small planned"}, state.plan ? "Preview: " : "Now: ", plannedText(a),
          a.pinned ? " (pinned)" : ""),
        errors.gpu ? h("div", {class: "field-error", role: "alert"}, errors.gpu) : null);
      return h("tr", {"data-service": a.service, class: rowWarnings.length ? "has-warning" : null},
        td("Service", {}, h("strong", {}, a.service),
          a.enabled === false ? badge("disabled") : null,
          rowWarnings.map((w) => h("div", {class: "row-warning"}, "⚠ ", w))),
        td("Model", {}, a.model),
        td("VRAM est.", {class: "num"}, `~${gb(a.vram_estimate_gb)}`),
        td("GPU", {}, gpuCell),
        td("VRAM budget", {}, budgetCell));
    });
    replace(tableBox, rows.length
      ? h("table", {class: "responsive assignments"},
        h("thead", {}, h("tr", {},
          h("th", {scope: "col"}, "Service"), h("th", {scope: "col"}, "Model"),
          h("th", {scope: "col", class: "num"}, "VRAM est."), h("th", {scope: "col"}, "GPU"),
          h("th", {scope: "col"}, "VRAM budget"))),
        h("tbody", {}, rows))
      : h("p", {class: "muted"}, "No GPU services in the catalog."));
    renderControls();
  }

  function renderWarnings() {
    const warnings = shownWarnings();
    replace(warningsBox, warnings.length
      ? [h("h3", {class: "small muted warnings-title"}, state.plan ? "Warnings (preview)" : "Warnings"),
        h("ul", {class: "warnings", "data-testid": "warnings"}, warnings.map((w) => h("li", {}, w)))]
      : h("ul", {class: "warnings", "data-testid": "warnings", hidden: true}));
  }

  function edited(service, field) {
    state.dirty = true;
    const errors = state.fieldErrors.get(service);
    if (errors && errors[field]) {
      delete errors[field];
      const row = tableBox.querySelector(`tr[data-service="${CSS.escape(service)}"]`);
      const control = field === "gpu" ? row?.querySelector("[data-testid=gpu-select]")
        : row?.querySelector("[data-testid=budget-input]");
      if (control) control.removeAttribute("aria-invalid");
      const message = field === "gpu" ? row?.querySelector(".gpu-cell .field-error")
        : row?.querySelector(".budget-cell .field-error");
      if (message) message.remove();
    }
  }

  /**
   * The body for PUT and POST preview. With the manual strategy every service is sent with the GPU chosen
   * for it (Auto = null: the planner places it like vram_based). With any other strategy the strategy places
   * the services, so only what the user set is sent: services moved off "Auto" (pinned to a GPU) and
   * services with a VRAM budget typed in; everything else is left to the strategy.
   */
  function formBody() {
    const assignments = [];
    const manual = state.strategy === "manual";
    for (const a of shownAssignments()) {
      const entry = state.form.get(a.service);
      if (!entry) continue;
      const pinned = entry.gpus !== AUTO;
      const budgetText = entry.budgetTouched ? String(entry.budget).trim() : "";
      const budget = budgetText === "" ? null : Number(budgetText);
      if (!manual && !pinned && budget === null) continue;
      const item = {service: a.service};
      if (pinned) {
        const keys = entry.gpus.map((k) => k.split("/"));
        const host = keys[0][0] || null;
        if (host && multiHost()) item.host = host;
        if (state.multi.has(a.service)) item.gpu_indices = keys.map(([, i]) => Number(i));
        else item.gpu_index = Number(keys[0][1]);
      } else if (state.multi.has(a.service)) {
        item.gpu_indices = null;
      } else {
        item.gpu_index = null;
      }
      // A budget that is not a number goes as typed, so the API's 422 names the field.
      item.vram_budget_override = budget === null ? null : (Number.isFinite(budget) ? budget : budgetText);
      if (a.enabled === false) item.enabled = false;
      assignments.push(item);
    }
    return {strategy: state.strategy, assignments};
  }

  /** Show a 422's field messages at the rows' inputs; true when one was placed. */
  function showFieldErrors(err, body) {
    state.fieldErrors = new Map();
    let placed = false;
    for (const [path, message] of err.fields || []) {
      const match = /^assignments\.(\d+)\.?(.*)$/.exec(path);
      if (!match) continue;
      const item = body.assignments[Number(match[1])];
      if (!item) continue;
      const field = match[2].startsWith("vram_budget") ? "budget" : "gpu";
      const errors = state.fieldErrors.get(item.service) || {};
      errors[field] = message;
      state.fieldErrors.set(item.service, errors);
      placed = true;
    }
    return placed;
  }

  async function preview() {
    if (!state.config || noGpusDetected()) return;
    const body = formBody();
    const mine = ++previewSeq;
    setBusy(true);
    setFormNotice(null);
    try {
      let plan;
      try {
        plan = await api.send("POST", "/api/system/gpu-config/preview", body);
      } catch (err) {
        // Older gateways only preview a strategy (GET): the form's own choices are then not in it.
        if (!(err instanceof ApiError) || (err.status !== 404 && err.status !== 405)) throw err;
        plan = await api.get(`/api/system/gpu-config/preview?strategy=${encodeURIComponent(body.strategy)}`);
      }
      if (!alive || mine !== previewSeq) return;
      state.fieldErrors = new Map();
      state.plan = plan;
      renderTable();
      renderWarnings();
      renderPreview();
      previewPanel.scrollIntoView?.({block: "nearest"});
    } catch (err) {
      if (!alive || mine !== previewSeq) return;
      failForm("Preview failed", err, body);
    } finally {
      if (alive && mine === previewSeq) setBusy(false);
    }
  }

  function failForm(what, err, body) {
    const placed = err instanceof ApiError && err.status === 422 && showFieldErrors(err, body);
    if (placed) {
      renderTable();
      setFormNotice({tone: "bad", text: `${what}: a field needs changing (marked in the table).`});
      const bad = tableBox.querySelector("[aria-invalid=true]");
      if (bad) bad.focus();
    } else {
      setFormNotice({tone: "bad", text: `${what}: ${err.message}`});
    }
  }

  async function save() {
    if (!state.config || noGpusDetected()) return;
    const body = formBody();
    setBusy(true);
    setFormNotice(null);
    try {
      const saved = await api.send("PUT", "/api/system/gpu-config", body);
      if (!alive) return;
      const revision = saved.config ? saved.config.revision : "?";
      await loadConfig();
      if (!alive) return;
      const warnings = (saved.warnings || []).length;
      setFormNotice({tone: "ok", text: `Saved revision ${revision}${warnings ? ` (${warnings} warning${
        warnings === 1 ? "" : "s"})` : ""}. “Apply & Restart Services” brings the containers to it.`});
    } catch (err) {
      if (!alive) return;
      failForm("Save failed", err, body);
    } finally {
      if (alive) setBusy(false);
    }
  }

  function setFormNotice(notice) {
    state.formNotice = notice;
    replace(formNoticeBox, notice
      ? h("div", {class: `notice notice-${notice.tone}`, "data-testid": "form-notice"}, notice.text)
      : null);
  }

  function setBusy(busy) {
    state.busy = busy;
    renderControls();
  }

  // ---- preview panel ---------------------------------------------------------------------------------
  function renderPreview() {
    const plan = state.plan;
    if (!plan) {
      previewPanel.hidden = true;
      replace(previewPanel);
      return;
    }
    previewPanel.hidden = false;
    const changes = (plan.changes || []).filter((c) => c.change !== "unchanged");
    const unchanged = (plan.changes || []).length - changes.length;
    const diff = changes.length
      ? h("table", {class: "responsive diff-table"},
        h("thead", {}, h("tr", {}, h("th", {scope: "col"}, "Service"), h("th", {scope: "col"}, "Change"),
          h("th", {scope: "col"}, "Before"), h("th", {scope: "col"}, "After"))),
        h("tbody", {}, changes.map((c) => h("tr", {
          class: c.change === "moved" ? "moved" : "changed", "data-service": c.service, "data-change": c.change,
        },
        td("Service", {}, h("strong", {}, c.service)),
        td("Change", {}, badge(c.change, c.change === "moved" ? "warn"
          : c.change === "removed" ? "bad" : "info")),
        td("Before", {}, c.before || "—"),
        td("After", {}, c.before && c.after ? h("span", {}, h("span", {class: "muted"}, "→ "), c.after)
          : (c.after || "—"))))))
      : h("p", {class: "notice notice-ok"}, "No changes from the saved configuration.");
    const assignments = plan.assignments || [];
    const stacks = (plan.gpus || []).map((load) => gpuStack(load, assignments));
    replace(previewPanel,
      h("div", {class: "panel-head"},
        h("h2", {id: "gpus-preview-h"}, "Preview: ", STRATEGY_LABELS[plan.strategy] || plan.strategy),
        h("span", {class: "muted small"}, "Nothing is saved until you press Save.")),
      plan.feasible === false
        ? h("div", {class: "notice notice-warn"}, "This plan does not fit in every GPU's VRAM (see the warnings).")
        : null,
      plan.message ? h("div", {class: "notice notice-warn"}, plan.message) : null,
      h("div", {class: "preview-grid"},
        h("div", {class: "preview-diff", "data-testid": "diff"},
          h("h3", {}, "Changes"), diff,
          changes.length && unchanged ? h("p", {class: "muted small"}, `${unchanged} service${unchanged === 1 ? "" : "s"} unchanged.`)
            : null),
        h("div", {class: "preview-stacks"}, h("h3", {}, "VRAM per GPU"), stacks)),
      (plan.warnings || []).length
        ? h("p", {class: "small preview-warning-count"}, h("span", {class: "badge badge-warn"},
          `${plan.warnings.length} warning${plan.warnings.length === 1 ? "" : "s"}`),
          " listed under the assignment table and under the rows they concern.")
        : h("p", {class: "small muted"}, "No warnings."));
  }

  function gpuStack(load, assignments) {
    const capacity = Number(load.capacity_gb) || 0;
    const scale = Math.max(capacity, Number(load.planned_gb) || 0) || 1;
    const parts = (load.services || []).map((service) => {
      const a = assignments.find((x) => x.service === service);
      const size = a ? (a.vram_budget_gb ?? a.vram_estimate_gb) / Math.max(1, (a.gpu_indices || []).length) : 0;
      return {service, size};
    });
    const label = `${gpuName(load.host, load.index)} · ${shortName(load.name)}`;
    const summary = `${oneDecimal(load.planned_gb)} / ${oneDecimal(capacity)} GB planned`;
    return h("div", {class: "gpu-stack-row", "data-gpu-index": load.index, "data-host": load.host},
      h("div", {class: "gpu-stack-head"},
        h("strong", {}, label),
        h("span", {class: load.overcommitted ? "error" : "muted"}, summary),
        load.overcommitted ? badge("Overcommitted", "bad") : null),
      h("div", {
        class: load.overcommitted ? "stack over" : "stack", "data-testid": "gpu-stack",
        "data-gpu-index": load.index, "data-host": load.host,
        "data-overcommitted": load.overcommitted ? "true" : "false",
        role: "img", "aria-label": `${label}: ${summary}: ${parts.map((p) => `${p.service} ${gb(p.size)}`).join(", ")
          || "nothing"}`,
      },
      parts.map((p) => h("span", {
        style: `width:${(Math.min(1, p.size / scale) * 100).toFixed(2)}%`,
        title: `${p.service}: ${gb(p.size)}`, "data-service": p.service,
      })),
      capacity < scale ? h("i", {class: "stack-capacity", style: `left:${(capacity / scale * 100).toFixed(2)}%`,
                                 title: `capacity ${gb(capacity)}`}) : null),
      h("ul", {class: "legend"}, parts.map((p, i) => h("li", {},
        h("span", {class: `swatch swatch-${(i % 6) + 1}`, "aria-hidden": "true"}),
        `${p.service} ${gb(p.size)}`))));
  }

  // ---- apply, progress, rollback ---------------------------------------------------------------------
  async function loadStatus() {
    try {
      const status = await api.get("/api/system/gpu-config/status");
      if (!alive) return;
      state.status = status;
      state.statusError = null;
    } catch (err) {
      if (!alive) return;
      state.statusError = err.message;
    }
    state.statusLoaded = true;
    renderApply();
    scheduleRunPoll();
  }

  function runActive() {
    const run = state.status && state.status.run;
    return !!run && ACTIVE_RUN.has(run.state);
  }

  function scheduleRunPoll() {
    if (runTimer || !alive || !runActive()) return;
    runTimer = setTimeout(async () => {
      runTimer = null;
      const wasActive = runActive();
      await loadStatus();
      // The run just ended: the saved configuration may have changed (a rollback restores it).
      if (alive && wasActive && !runActive() && !state.dirty) loadConfig();
    }, RUN_POLL_MS);
  }

  function onProgress(message) {
    if (!message || !message.run) return;
    const current = state.status && state.status.run;
    // Show this run if it is the one shown, or a newer one.
    if (current && current.id !== message.run.id && Date.parse(message.run.created_at) < Date.parse(current.created_at)) {
      return;
    }
    state.status = {...(state.status || {drift: [], problems: [], compose: ""}), run: message.run};
    renderApply();
    scheduleRunPoll();
    if (!ACTIVE_RUN.has(message.run.state)) loadStatus();  // drift and problems after the run
  }

  async function startRun(path, what) {
    state.runNotice = null;
    setBusy(true);
    try {
      const accepted = await api.send("POST", path);
      if (!alive) return;
      state.applyProblem = null;
      const known = state.status && state.status.run;
      if (!known || known.id !== accepted.run_id) {
        state.status = {...(state.status || {drift: [], problems: [], compose: ""}),
          run: {id: accepted.run_id, kind: accepted.kind, state: accepted.state, revision: accepted.revision,
                trigger: "console", created_at: new Date().toISOString(), services: [], touched: [], notes: []}};
      }
      renderApply();
      scheduleRunPoll();
      loadStatus();
    } catch (err) {
      if (!alive) return;
      if (err.status === 409) {
        const running = err.body && err.body.run_id;
        state.runNotice = {tone: "warn", text: running ? `${err.message} Showing the run in progress.` : err.message};
        await loadStatus();
      } else if (err.status === 503) {
        state.applyProblem = err.message;
        await loadStatus();
      } else {
        state.runNotice = {tone: "bad", text: `${what} failed: ${err.message}`};
        renderApply();
      }
    } finally {
      if (alive) setBusy(false);
    }
  }

  function apply() {
    if (noGpusDetected()) return;
    startRun("/api/system/gpu-config/apply", "Apply");
  }

  function rollback() {
    if (noGpusDetected()) return;
    startRun("/api/system/gpu-config/rollback", "Rollback");
  }

  function statusLine() {
    const status = state.status;
    const run = status && status.run;
    if (runActive()) {
      return {tone: "info", text: run.state === "rolling_back" ? "Apply failed; rolling back…" : "Apply in progress…"};
    }
    const problems = [...(state.applyProblem ? [state.applyProblem] : []), ...((status && status.problems) || [])];
    if (problems.length) return {tone: "warn", text: `apply is not set up: ${[...new Set(problems)].join("; ")}`};
    if (state.statusError && !status) return {tone: "warn", text: `Status not available: ${state.statusError}`};
    if (run && run.state === "failed") return {tone: "bad", text: `Last run failed: ${run.error || "see below"}`};
    const drift = (status && status.drift) || [];
    const driftText = drift.length ? `Drift found: ${drift.map((d) => `${d.service} (${
      (d.differences || []).join(", ") || `expected ${d.expected}, found ${d.actual}`})`).join("; ")}` : null;
    if (run && run.state === "rolled_back") {
      return {tone: "warn", text: `Rolled back${run.error ? `: ${run.error}` : ""}${driftText ? ` · ${driftText}` : ""}`};
    }
    if (driftText) return {tone: "warn", text: driftText};
    if (run && run.state === "succeeded") return {tone: "ok", text: "All services running"};
    if (!run && !state.statusLoaded) return {tone: "info", text: "Loading the apply status…"};
    if (!run) return {tone: "info", text: "Not applied yet from gpuplane."};
    return {tone: "info", text: `Last run: ${run.state}`};
  }

  function renderApply() {
    const status = state.status;
    const run = status && status.run;
    const line = statusLine();
    const parts = [
      h("div", {class: "status-line", "data-testid": "status-line", "data-tone": line.tone},
        h("span", {class: `dot dot-${line.tone}`, "aria-hidden": "true"}), h("span", {}, "Status: ", line.text)),
    ];
    if (state.runNotice) parts.push(h("div", {class: `notice notice-${state.runNotice.tone}`}, state.runNotice.text));
    if (status && status.applied_revision != null) {
      parts.push(h("p", {class: "muted small"}, `Containers run revision ${status.applied_revision}`,
        state.config && state.config.saved && state.config.revision !== status.applied_revision
          ? ` · saved revision ${state.config.revision} is not applied yet` : ""));
    }
    if (run) parts.push(runView(run));
    const drift = (status && status.drift) || [];
    if (drift.length) {
      parts.push(h("h3", {}, "Drift"), h("ul", {class: "warnings", "data-testid": "drift"}, drift.map((d) =>
        h("li", {}, `${d.service}${d.container ? ` (${d.container.slice(0, 12)})` : ""}: expected ${d.expected}, `
          + `runs ${d.actual}${(d.differences || []).length ? ` — ${d.differences.join("; ")}` : ""}`))));
    }
    if (status && status.compose) parts.push(h("p", {class: "muted small mono compose"}, status.compose));
    const canRollback = run && !ACTIVE_RUN.has(run.state)
      && (["failed", "rolled_back"].includes(run.state) || (run.services || []).length > 0);
    if (canRollback) {
      parts.push(h("div", {class: "actions"},
        h("button", {type: "button", class: "danger", "data-testid": "rollback", onclick: rollback,
                     disabled: state.busy || noGpusDetected()},
          "Rollback"),
        h("span", {class: "muted small"}, "Restore the configuration applied before the last run that changed something.")));
    }
    replace(applyBox, parts);
    renderControls();
  }

  function runView(run) {
    const tone = RUN_TONE[run.state] || "info";
    const services = run.services || [];
    const head = h("div", {class: "run-head"},
      h("strong", {}, run.kind === "rollback" ? "Rollback run" : run.kind === "converge" ? "Start-up run" : "Apply run"),
      badge(run.state, tone, {"data-testid": "run-state"}),
      h("span", {class: "muted small"}, run.revision != null ? `revision ${run.revision} · ` : "",
        run.trigger ? `${run.trigger} · ` : "", "started ", timeEl(run.started_at || run.created_at),
        run.finished_at ? [" · finished ", timeEl(run.finished_at)] : ""));
    const table = services.length
      ? h("table", {class: "responsive progress-table"},
        h("thead", {}, h("tr", {}, h("th", {scope: "col"}, "Service"), h("th", {scope: "col"}, "Change"),
          h("th", {scope: "col"}, "GPUs"), h("th", {scope: "col"}, "State"))),
        h("tbody", {}, services.map((s) => h("tr", {
          "data-testid": "progress", "data-service": s.service, "data-state": s.state,
          class: s.state === "failed" ? "failed" : s.state === "recreating" ? "changed" : null,
        },
        td("Service", {}, h("strong", {}, s.service)),
        td("Change", {}, s.change ? withGpuNames(s.change) : "—"),
        td("GPUs", {}, `${deviceNames(s.devices_before)} → ${deviceNames(s.devices_after)}`),
        td("State", {}, badge(s.state, SERVICE_TONE[s.state] || "info"),
          s.error ? h("div", {class: "error small service-error"}, s.error) : null)))))
      : h("p", {class: "muted small"}, ACTIVE_RUN.has(run.state) ? "Waiting for the orchestrator…"
        : "No service needed a change.");
    const touched = (run.touched || []).length
      ? [h("h3", {}, "Containers touched"), h("ul", {class: "touched", "data-testid": "touched"}, run.touched.map((t) =>
        h("li", {}, h("strong", {}, t.service), " ",
          h("span", {class: "mono small"}, `${(t.container_before || "none").slice(0, 12)} → ${
            (t.container_after || "none").slice(0, 12)}`),
          " — ", withGpuNames(t.why), " ", t.at ? timeEl(t.at) : null)))]
      : null;
    return h("div", {class: "run", "data-run-id": run.id, "data-run-kind": run.kind},
      head,
      run.rollback_of ? h("p", {class: "muted small"}, `Undoes run ${run.rollback_of}.`) : null,
      run.error ? h("div", {class: `notice ${run.state === "rolled_back" ? "notice-warn" : "notice-bad"}`,
                            "data-testid": "run-error"}, run.error) : null,
      table,
      touched,
      (run.notes || []).length ? h("ul", {class: "muted small run-notes"}, run.notes.map((n) => h("li", {}, n))) : null);
  }

  // ---- enabling controls -----------------------------------------------------------------------------
  function renderControls() {
    const none = noGpusDetected();
    const noConfig = !state.config;
    const formOff = none || noConfig || state.busy;
    for (const input of root.querySelectorAll("input[name=strategy], .assignments select, .assignments input, .assignments fieldset")) {
      input.disabled = none || noConfig;
    }
    previewButton.disabled = formOff;
    saveButton.disabled = formOff;
    applyButton.disabled = none || state.busy || runActive();
    applyButton.textContent = runActive() ? "Apply in progress…" : "Apply & Restart Services";
    const rollbackButton = root.querySelector("[data-testid=rollback]");
    if (rollbackButton) rollbackButton.disabled = none || state.busy;
    root.dataset.noGpus = none ? "true" : "false";
  }

  // ---- events and polling ----------------------------------------------------------------------------
  const unsubscribe = [
    events.on("inventory", onInventory),
    events.on("gpu_health", onGpuHealth),
    events.on("progress", onProgress),
    // The stream (re)opened or dropped events: what changed meanwhile comes from a fresh read.
    events.on("resync", () => { loadGpus(); loadStatus(); }),
    events.on("config", (message) => {
      const revision = message && message.config && message.config.revision;
      if (!state.config || revision == null || revision <= state.config.revision || state.busy) return;
      if (!state.dirty) loadConfig();
      else setFormNotice({tone: "warn", text: `The configuration was saved elsewhere (revision ${revision}); `
        + "saving now replaces it."});
    }),
  ];
  timers.push(setInterval(loadGpus, GPU_POLL_MS));

  renderGpus();
  renderApply();
  await Promise.all([loadGpus(), loadConfig(), loadStatus()]);

  return () => {
    alive = false;
    for (const stop of unsubscribe) stop();
    for (const timer of timers) clearInterval(timer);
    if (runTimer) clearTimeout(runTimer);
  };
}
