// Backup: download the whole configuration as YAML; restore one (a file or pasted text) after a dry run that
// shows what would change.

import {h, replace} from "../lib/dom.js";

export const title = "Backup";

const MAX_BYTES = 2 * 1024 * 1024;

const CHANGE = {
  added: {text: "added", tone: "info", row: "changed"},
  moved: {text: "moved", tone: "warn", row: "moved"},
  budget: {text: "budget", tone: "info", row: "changed"},
  removed: {text: "removed", tone: "bad", row: "failed"},
  unchanged: {text: "unchanged", tone: null, row: null},
};

function badge(text, tone) {
  return h("span", {class: `badge${tone ? ` badge-${tone}` : ""}`}, text);
}

/** A cell labelled for phones (where each row reads "label: value"); several children travel as one block. */
function td(label, ...children) {
  const parts = children.filter((c) => c !== null && c !== undefined && c !== false);
  return h("td", {"data-label": label}, parts.length > 1 ? h("div", {class: "cell"}, parts) : parts);
}

function dash(value) {
  return value === null || value === undefined || value === "" ? h("span", {class: "muted"}, "—") : value;
}

function diffView(result) {
  const changes = result.changes || [];
  const changed = changes.filter((c) => c.change !== "unchanged");
  const summary = changed.length
    ? h("p", {class: "status-line"}, h("span", {class: "dot dot-warn", "aria-hidden": "true"}),
      changed.length === changes.length
        ? `${changed.length} service${changed.length === 1 ? "" : "s"} would change.`
        : `${changed.length} of ${changes.length} services would change.`)
    : h("p", {class: "status-line", "data-testid": "no-changes"}, h("span", {class: "dot dot-ok", "aria-hidden": "true"}),
      "No changes: the running configuration already matches this backup.");
  const rows = changes.map((c) => {
    const kind = CHANGE[c.change] || {text: c.change, tone: "info", row: "changed"};
    return h("tr", {"data-testid": "change", "data-service": c.service, "data-change": c.change,
      class: kind.row || "backup-unchanged"},
      td("Service", h("strong", {}, c.service)),
      td("Change", badge(kind.text, kind.tone)),
      td("Now", h("span", {class: "mono"}, dash(c.before))),
      td("After restore", h("span", {class: "mono"}, dash(c.after))));
  });
  return h("div", {class: "backup-diff", "data-testid": "diff"},
    h("p", {class: "small muted"},
      `Backup version ${result.version}`, result.strategy ? [", strategy ", h("strong", {}, result.strategy)] : null, "."),
    summary,
    changes.length ? h("div", {class: "table-wrap"},
      h("table", {class: "responsive"},
        h("caption", {class: "sr-only"}, "What restoring this backup would change"),
        h("thead", {}, h("tr", {}, ["Service", "Change", "Now", "After restore"].map((t) => h("th", {scope: "col"}, t)))),
        h("tbody", {}, rows))) : null,
    (result.warnings || []).length ? [h("h3", {}, "Warnings"),
      h("ul", {class: "warnings", "data-testid": "restore-warnings"}, result.warnings.map((w) => h("li", {}, w)))] : null,
    (result.notes || []).length ? [h("h3", {}, "Notes"),
      h("ul", {class: "backup-notes", "data-testid": "restore-notes"}, result.notes.map((n) => h("li", {}, n)))] : null);
}

export async function mount(root, {api}) {
  // ---- download
  const download = h("a", {href: "/api/system/backup", download: true, class: "button primary",
    "data-testid": "download"}, "Download backup (YAML)");
  const downloadPanel = h("section", {class: "panel", "aria-labelledby": "backup-title"},
    h("div", {class: "panel-head"}, h("h2", {id: "backup-title"}, "Export")),
    h("p", {}, "The whole configuration in one YAML file: the strategy, every assignment and budget, the settings, ",
      "and the inference keys' names (never their secrets). Keep it with your other backups."),
    h("div", {class: "actions"}, download));

  // ---- restore
  const upload = h("input", {id: "backup-file", type: "file", "data-testid": "upload",
    accept: ".yaml,.yml,application/yaml,text/yaml,text/plain", "aria-describedby": "backup-file-help"});
  const text = h("textarea", {id: "backup-text", "data-testid": "restore-text", rows: "8", spellcheck: "false",
    class: "mono", placeholder: "version: 1\nstrategy: …", "aria-describedby": "backup-text-help"});
  const dryRun = h("button", {type: "submit", class: "primary", "data-testid": "dry-run"}, "Check what would change");
  const status = h("span", {class: "small muted", role: "status", "aria-live": "polite"});
  const result = h("div", {"aria-live": "polite"});
  const restoreArea = h("div", {});
  let checked = null; // the text the last successful dry run was for

  function invalidate() {
    if (checked !== null && text.value !== checked) {
      checked = null;
      replace(restoreArea, h("p", {class: "small muted"}, "The text changed since the check: check it again to restore."));
    }
  }
  text.addEventListener("input", invalidate);

  function showError(err, what) {
    replace(result, h("div", {class: "notice notice-bad", role: "alert", "data-testid": "restore-error"},
      h("strong", {}, `${what} failed${err.status ? ` (${err.status})` : ""}: `), err.message));
  }

  async function check() {
    const body = text.value;
    if (!body.trim()) {
      replace(result, h("p", {class: "notice notice-warn", role: "alert"}, "Choose a backup file or paste one first."));
      text.focus();
      return;
    }
    dryRun.disabled = true;
    status.textContent = "Checking…";
    replace(restoreArea);
    checked = null;
    try {
      const {data} = await api.call("POST", "/api/system/backup/restore?dry_run=true", {
        body, headers: {"Content-Type": "application/yaml"},
      });
      checked = body;
      replace(result, diffView(data));
      const restore = h("button", {type: "button", class: "danger", "data-testid": "restore"}, "Restore");
      restore.addEventListener("click", () => apply(restore));
      replace(restoreArea, h("div", {class: "actions"}, restore,
        h("span", {class: "small muted"}, "Saves the backup's configuration as a new revision. Nothing has changed yet.")));
      status.textContent = "Checked: nothing was changed.";
    } catch (err) {
      showError(err, "The check");
      status.textContent = "";
    } finally {
      dryRun.disabled = false;
    }
  }

  async function apply(button) {
    if (checked === null) return;
    button.disabled = true;
    status.textContent = "Restoring…";
    try {
      const {data} = await api.call("POST", "/api/system/backup/restore?dry_run=false", {
        body: checked, headers: {"Content-Type": "application/yaml"},
      });
      checked = null;
      replace(restoreArea, h("div", {class: "notice notice-ok", role: "status", "data-testid": "restored"},
        h("strong", {}, data.revision !== null && data.revision !== undefined
          ? `Restored as revision ${data.revision}.` : "Restored."),
        " The containers move when it is applied: ", h("a", {href: "#/gpus"}, "GPU Configuration"),
        ", Apply & Restart Services."));
      if ((data.warnings || []).length || (data.notes || []).length) replace(result, diffView(data));
      status.textContent = "";
    } catch (err) {
      button.disabled = false;
      showError(err, "The restore");
      status.textContent = "";
    }
  }

  upload.addEventListener("change", async () => {
    const file = upload.files && upload.files[0];
    if (!file) return;
    if (file.size > MAX_BYTES) {
      replace(result, h("p", {class: "notice notice-bad", role: "alert"},
        `${file.name} is ${(file.size / 1048576).toFixed(1)} MB: a backup is a few kB; is this the right file?`));
      return;
    }
    try {
      text.value = await file.text();
    } catch (err) {
      replace(result, h("p", {class: "notice notice-bad", role: "alert"}, `Could not read ${file.name}: ${err.message}`));
      return;
    }
    await check();
  });

  const form = h("form", {onsubmit: (event) => { event.preventDefault(); check(); }, "aria-labelledby": "restore-title"},
    h("div", {class: "field"}, h("label", {for: "backup-file"}, "Backup file"), upload,
      h("span", {class: "small muted", id: "backup-file-help"}, "Choosing a file checks it at once; nothing is changed yet.")),
    h("div", {class: "field"}, h("label", {for: "backup-text"}, "…or paste the backup"), text,
      h("span", {class: "small muted", id: "backup-text-help"}, "The YAML that Export downloads (or ", h("code", {}, "gpuplane config export"), " writes).")),
    h("div", {class: "actions"}, dryRun, status));
  const restorePanel = h("section", {class: "panel", "aria-labelledby": "restore-title"},
    h("div", {class: "panel-head"}, h("h2", {id: "restore-title"}, "Restore")),
    form, result, restoreArea);

  replace(root, h("h1", {class: "sr-only"}, "Backup"), downloadPanel, restorePanel);
  return () => {};
}
