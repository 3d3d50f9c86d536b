// Keys & audit: create an inference key (shown once), list and revoke keys; the audit trail, newest first,
// filtered by action, paged with "Older", and prepended live from the `audit` events.

import {h, replace} from "../lib/dom.js";
import {timeEl} from "../lib/format.js";

export const title = "Keys & audit";

/** shared/contracts.py AuditAction, in its order. */
const ACTIONS = [
  ["config_save", "Configuration saved"],
  ["apply", "Apply"],
  ["rollback", "Rollback"],
  ["rescan", "GPU rescan"],
  ["key_create", "Key created"],
  ["key_revoke", "Key revoked"],
  ["login", "Sign in"],
  ["auth_failure", "Refused credential"],
];
const ACTION_TEXT = Object.fromEntries(ACTIONS);
const PAGE_SIZE = 50;

function badge(text, tone) {
  return h("span", {class: `badge${tone ? ` badge-${tone}` : ""}`}, text);
}

/** A cell labelled for phones (where each row reads "label: value"); several children travel as one block. */
function td(label, ...children) {
  const parts = children.filter((c) => c !== null && c !== undefined && c !== false);
  return h("td", {"data-label": label}, parts.length > 1 ? h("div", {class: "cell"}, parts) : parts);
}

function newestFirst(a, b) {
  return Date.parse(b.created_at) - Date.parse(a.created_at);
}

// --------------------------------------------------------------------------- keys

function keysPanel(api) {
  const name = h("input", {id: "key-name", name: "name", "data-testid": "key-name", required: true,
    autocomplete: "off", maxlength: "63", placeholder: "e.g. open-webui", "aria-describedby": "key-name-help"});
  const maxPriority = h("select", {id: "key-priority", name: "max_priority", "data-testid": "key-priority",
    "aria-describedby": "key-priority-help"},
    h("option", {value: ""}, "any"), ["high", "normal", "low"].map((p) => h("option", {value: p}, p)));
  const rpm = h("input", {id: "key-rpm", name: "rpm_limit", type: "number", min: "1", max: "1000000", step: "1",
    inputmode: "numeric", "data-testid": "key-rpm", placeholder: "no limit", "aria-describedby": "key-rpm-help"});
  const create = h("button", {type: "submit", class: "primary", "data-testid": "key-create"}, "Create key");
  const formError = h("div", {role: "alert"});
  const created = h("div", {"aria-live": "polite"});
  const list = h("div", {}, h("p", {class: "muted"}, "Loading…"));
  const fields = {name, max_priority: maxPriority, rpm_limit: rpm};
  const errors = {};

  function field(control, label, help) {
    const error = h("p", {class: "field-error", id: `${control.id}-error`});
    errors[control.name] = error;
    return h("div", {class: "field"}, h("label", {for: control.id}, label), control,
      h("span", {class: "small muted", id: `${control.id}-help`}, help), error);
  }

  function clearErrors() {
    replace(formError);
    for (const [key, control] of Object.entries(fields)) {
      control.removeAttribute("aria-invalid");
      control.setAttribute("aria-describedby", `${control.id}-help`);
      errors[key].textContent = "";
    }
  }

  function fieldError(key, message) {
    const control = fields[key];
    if (!control) return false;
    control.setAttribute("aria-invalid", "true");
    control.setAttribute("aria-describedby", `${control.id}-help ${control.id}-error`);
    errors[key].textContent = message;
    return true;
  }

  function showCreated(key) {
    const secret = h("code", {class: "keys-secret", "data-testid": "new-key", tabindex: "0",
      "aria-label": `The new key for ${key.name}`}, key.key);
    const copied = h("span", {class: "small", role: "status", "aria-live": "polite"});
    const copy = h("button", {type: "button", "data-testid": "copy-key", onclick: async () => {
      try {
        await navigator.clipboard.writeText(key.key);
        copied.textContent = "Copied.";
      } catch {
        const range = document.createRange();
        range.selectNodeContents(secret);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        copied.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
      }
    }}, "Copy");
    const done = h("button", {type: "button", class: "quiet", onclick: () => { replace(created); name.focus(); }},
      "Done");
    replace(created, h("div", {class: "notice notice-ok keys-created", "data-testid": "key-created"},
      h("p", {}, h("strong", {}, `Key “${key.name}” created.`), " Store it now; it is not shown again."),
      h("div", {class: "keys-secret-row"}, secret, copy, copied),
      h("p", {class: "small"}, "Use it as ", h("code", {}, "Authorization: Bearer <key>"), " on ",
        h("code", {}, "/v1/…"), "."),
      h("div", {class: "actions"}, done)));
    copy.focus();
  }

  async function submit(event) {
    event.preventDefault();
    clearErrors();
    const body = {name: name.value.trim(), max_priority: maxPriority.value || null,
      rpm_limit: rpm.value === "" ? null : Number(rpm.value)};
    if (!body.name) { fieldError("name", "Give the key a name."); name.focus(); return; }
    if (body.rpm_limit !== null && !(Number.isInteger(body.rpm_limit) && body.rpm_limit >= 1)) {
      fieldError("rpm_limit", "A whole number of requests per minute, at least 1 (or empty: no limit).");
      rpm.focus();
      return;
    }
    create.disabled = true;
    try {
      const key = await api.send("POST", "/api/system/keys", body);
      name.value = "";
      rpm.value = "";
      maxPriority.value = "";
      showCreated(key);
      await load();
    } catch (err) {
      let placed = false;
      for (const [loc, message] of err.fields || []) placed = fieldError(loc.split(".")[0], message) || placed;
      if (!placed && err.status === 409) placed = fieldError("name", err.message);
      if (!placed) replace(formError, h("p", {class: "notice notice-bad"}, err.message));
      const first = Object.values(fields).find((c) => c.getAttribute("aria-invalid") === "true");
      if (first) first.focus();
    } finally {
      create.disabled = false;
    }
  }

  // A <dialog> to confirm a revocation (Escape or Cancel closes it; focus returns to the row's button).
  const dialogText = h("p", {});
  const confirmButton = h("button", {type: "button", class: "danger", "data-testid": "revoke-confirm"}, "Revoke");
  const cancelButton = h("button", {type: "button", class: "quiet", "data-testid": "revoke-cancel"}, "Cancel");
  const dialogError = h("p", {class: "field-error", role: "alert"});
  const dialog = h("dialog", {class: "keys-dialog", "aria-labelledby": "revoke-title"},
    h("h2", {id: "revoke-title"}, "Revoke this key?"), dialogText, dialogError,
    h("div", {class: "actions"}, confirmButton, cancelButton));
  let pending = null;
  cancelButton.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    if (pending) (pending.button.isConnected ? pending.button : name).focus();
    pending = null;
  });
  confirmButton.addEventListener("click", async () => {
    if (!pending) return;
    confirmButton.disabled = true;
    try {
      await api.send("DELETE", `/api/system/keys/${encodeURIComponent(pending.name)}`);
      await load();
      dialog.close();
    } catch (err) {
      dialogError.textContent = err.message;
    } finally {
      confirmButton.disabled = false;
    }
  });

  function ask(keyName, button) {
    pending = {name: keyName, button};
    dialogText.textContent = `Requests with the key “${keyName}” are refused from now on. This cannot be undone; ` +
      "create a new key to give access again.";
    dialogError.textContent = "";
    dialog.showModal();
    cancelButton.focus();
  }

  function table(keys) {
    if (!keys.length) return h("p", {class: "muted", "data-testid": "keys"}, "No keys yet: create one above.");
    const live = keys.filter((k) => !k.revoked_at).sort(newestFirst);
    const revoked = keys.filter((k) => k.revoked_at).sort(newestFirst);
    const rows = [...live, ...revoked].map((k) => {
      const revokeButton = k.revoked_at ? null : h("button", {type: "button", class: "danger", "data-testid": "revoke",
        "aria-label": `Revoke ${k.name}`}, "Revoke");
      if (revokeButton) revokeButton.addEventListener("click", () => ask(k.name, revokeButton));
      return h("tr", {"data-testid": "key", "data-name": k.name, "data-state": k.revoked_at ? "revoked" : "live",
        class: k.revoked_at ? "keys-revoked" : null},
        td("Name", h("strong", {}, k.name)),
        td("Key", h("code", {"data-testid": "key-prefix"}, `${k.prefix}…`)),
        td("Max priority", k.max_priority || h("span", {class: "muted"}, "any")),
        td("Per minute", k.rpm_limit ? String(k.rpm_limit) : h("span", {class: "muted"}, "no limit")),
        td("Created", timeEl(k.created_at), h("span", {class: "small muted"}, ` by ${k.created_by}`)),
        td("State", k.revoked_at ? [badge("revoked", "bad"), " ", timeEl(k.revoked_at)] : badge("live", "ok")),
        td("Actions", revokeButton || h("span", {class: "muted"}, "—")));
    });
    return h("div", {class: "table-wrap"},
      h("table", {class: "responsive", "data-testid": "keys"},
        h("caption", {class: "sr-only"}, "Inference keys"),
        h("thead", {}, h("tr", {}, ["Name", "Key", "Max priority", "Per minute", "Created", "State"]
          .map((t) => h("th", {scope: "col"}, t)), h("th", {scope: "col"}, h("span", {class: "sr-only"}, "Actions")))),
        h("tbody", {}, rows)));
  }

  async function load() {
    try {
      const {keys} = await api.get("/api/system/keys?include_revoked=true");
      replace(list, table(keys));
    } catch (err) {
      replace(list, h("p", {class: "notice notice-bad"}, `Could not list the keys: ${err.message}`));
    }
  }

  const form = h("form", {class: "keys-form", onsubmit: submit, novalidate: true, "aria-labelledby": "keys-new"},
    h("h3", {id: "keys-new"}, "New key"),
    h("div", {class: "keys-fields"},
      field(name, "Name", "Who uses it: shown in the audit trail and metrics."),
      field(maxPriority, "Highest priority", "The highest priority its requests may ask for."),
      field(rpm, "Requests per minute", "Empty: no limit.")),
    formError,
    h("div", {class: "actions"}, create));
  const panel = h("section", {class: "panel", "aria-labelledby": "keys-title"},
    h("div", {class: "panel-head"}, h("h2", {id: "keys-title"}, "Inference keys"),
      h("span", {class: "small muted"}, "For /v1 clients; the admin token is not one of them.")),
    form, created, list, dialog);
  return {panel, load};
}

// --------------------------------------------------------------------------- audit

function auditPanel(api, events) {
  const filter = h("select", {id: "audit-filter", "data-testid": "audit-filter"},
    h("option", {value: ""}, "All actions"), ACTIONS.map(([value, text]) => h("option", {value}, text)));
  const body = h("tbody", {});
  const tableEl = h("table", {class: "responsive", "data-testid": "audit"},
    h("caption", {class: "sr-only"}, "Audit trail, newest first"),
    h("thead", {}, h("tr", {}, ["When", "Action", "Who", "From", "What", "Outcome"]
      .map((t) => h("th", {scope: "col"}, t)))),
    body);
  const empty = h("p", {class: "muted"});
  const message = h("div", {role: "status", "aria-live": "polite"});
  const older = h("button", {type: "button", "data-testid": "audit-older", hidden: true}, "Older");
  let nextBefore = null;
  let generation = 0;

  function signature(r) {
    return `${Date.parse(r.at)}|${r.action}|${r.actor}|${JSON.stringify(r.target || {})}`;
  }
  const shown = new Set();

  function row(r) {
    const tone = r.outcome === "ok" ? (r.action === "auth_failure" ? "bad" : "info") : "bad";
    const target = Object.entries(r.target || {});
    return h("tr", {"data-testid": "audit-record", "data-action": r.action, "data-id": r.id ?? ""},
      td("When", timeEl(r.at)),
      td("Action", badge(ACTION_TEXT[r.action] || r.action, tone)),
      td("Who", h("strong", {}, r.actor), h("span", {class: "small muted"}, ` ${r.actor_kind || ""}`)),
      td("From", r.address ? h("span", {class: "mono small"}, r.address) : h("span", {class: "muted"}, "—")),
      td("What", target.length
        ? target.map(([k, v], i) => [i ? ", " : "", h("span", {class: "muted"}, `${k} `), h("span", {class: "mono"}, v)])
        : null,
      r.detail ? h("div", {class: "small muted"}, r.detail) : null,
      !target.length && !r.detail ? h("span", {class: "muted"}, "—") : null),
      td("Outcome", badge(r.outcome, r.outcome === "ok" ? "ok" : "bad")));
  }

  function showEmpty() {
    const none = body.children.length === 0;
    tableEl.hidden = none;
    empty.hidden = !none;
    empty.textContent = filter.value ? `No “${ACTION_TEXT[filter.value]}” records.` : "No records yet.";
  }

  async function load(append = false) {
    const mine = append ? generation : ++generation;
    const params = new URLSearchParams({limit: String(PAGE_SIZE)});
    if (filter.value) params.set("action", filter.value);
    if (append && nextBefore) params.set("before", String(nextBefore));
    older.disabled = true;
    try {
      const page = await api.get(`/api/system/audit?${params}`);
      if (mine !== generation) return;
      if (!append) { body.replaceChildren(); shown.clear(); }
      for (const r of page.records) {
        const sig = signature(r);
        if (shown.has(sig)) continue;
        shown.add(sig);
        body.append(row(r));
      }
      nextBefore = page.next_before;
      older.hidden = !nextBefore;
      replace(message);
    } catch (err) {
      if (mine === generation) replace(message, h("p", {class: "notice notice-bad"}, `Could not read the audit trail: ${err.message}`));
    } finally {
      older.disabled = false;
      showEmpty();
    }
  }

  filter.addEventListener("change", () => load());
  older.addEventListener("click", () => load(true));

  // Records made before the stream (re)opened, or dropped for it, come from a fresh read.
  const offResync = events.on("resync", () => load());
  const offAudit = events.on("audit", (record) => {
    if (filter.value && record.action !== filter.value) return;
    const sig = signature(record);
    if (shown.has(sig)) return;
    shown.add(sig);
    body.prepend(row(record));
    showEmpty();
  });

  const panel = h("section", {class: "panel", "aria-labelledby": "audit-title"},
    h("div", {class: "panel-head"}, h("h2", {id: "audit-title"}, "Audit trail"),
      h("div", {class: "audit-filter"}, h("label", {for: "audit-filter"}, "Action"), filter)),
    message, h("div", {class: "table-wrap"}, tableEl), empty,
    h("div", {class: "actions"}, older));
  const off = () => { offResync(); offAudit(); };
  return {panel, load, off};
}

// --------------------------------------------------------------------------- the page

export async function mount(root, {api, events}) {
  const keys = keysPanel(api);
  const audit = auditPanel(api, events);
  replace(root, h("h1", {class: "sr-only"}, "Keys & audit"), keys.panel, audit.panel);
  await Promise.all([keys.load(), audit.load()]);
  return () => audit.off();
}
