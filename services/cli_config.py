"""The web console's actions from a shell: ``gpuplane config``, ``audit`` and ``completion``.

Pure functions come first (drafts, tables, status lines, the completion script): they take the gateway's
answers as models and return text, so tests need no network. The ``run_*`` functions below call the gateway
through ``api_call`` and print.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.api.schemas import (
    ApplyStatusOut,
    AuditPageOut,
    GpuConfigOut,
    GpuConfigSavedOut,
    PlanPreviewOut,
    RestoreOut,
    RunAcceptedOut,
)
from shared.contracts import (
    ApplyRun,
    AssignmentDiff,
    AssignmentRequest,
    AuditRecord,
    GpuPlanLoad,
    RunState,
    ServiceAssignment,
    utc_now,
)
from shared.errors import ConfigError, GpuplaneError
from shared.names import check_name

log = logging.getLogger("gpuplane.cli")

CONFIG_PATH = "/api/system/gpu-config"
DRAFT_FILE = "cli-draft.json"
POLL_INTERVAL_S = 0.5
CALL_TIMEOUT_S = 40.0
"""Past the gateway's own 30 s wait on the orchestrator (apply, rollback), so its answer is seen."""
MARKS = {"added": "+", "removed": "-", "moved": "~", "budget": "~", "unchanged": " "}
"""How a change line starts in a diff: moved and budget lines are what an apply recreates."""


class ApiError(GpuplaneError):
    """The gateway refused a call (``status`` 4xx/5xx) or did not answer (``status`` None)."""

    def __init__(self, message: str, status: int | None, body: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body

    @property
    def exit_code(self) -> int:
        """2 for the caller's mistake (4xx), 1 for the gateway's trouble (5xx, unreachable)."""
        return 2 if self.status is not None and 400 <= self.status < 500 else 1


# --------------------------------------------------------------------------- HTTP


def error_detail(body: object, fallback: str) -> str:
    """The gateway's ``detail``: a string, or FastAPI's list of field errors joined as ``loc: msg``."""
    if not isinstance(body, dict) or "detail" not in body:
        return fallback
    detail = body["detail"]
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()))
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        text = "; ".join(parts)
    else:
        text = detail if isinstance(detail, str) else json.dumps(detail)
    run_id = body.get("run_id")
    if run_id and str(run_id) not in text:
        text += f" (run {run_id})"
    return text


def api_call(
    method: str,
    path: str,
    args: argparse.Namespace,
    body: object | None = None,
    *,
    content: bytes | None = None,
    content_type: str | None = None,
    timeout_s: float | None = None,
) -> Any:
    """Call the gateway with the admin token (GPUPLANE_API_TOKEN, else the one ``up`` keeps in the data dir).

    Sends ``body`` as JSON, or ``content`` as raw bytes of ``content_type``. Answers JSON as decoded JSON,
    anything else as text, nothing as None. ``timeout_s`` defaults to ``args.timeout_s``.
    """
    import httpx

    from services.api.settings import ApiSettings

    settings = ApiSettings(auth="on")
    token = settings.admin_token()
    if token is None:
        raise ConfigError(
            f"no admin token: set GPUPLANE_API_TOKEN, or GPUPLANE_DATA_DIR to the stack's data dir "
            f"(looked in {settings.data_dir.resolve()})"
        )
    url = (getattr(args, "api_url", None) or f"http://127.0.0.1:{settings.http_port}").rstrip("/") + path
    headers = {"Authorization": f"Bearer {token}"}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        response = httpx.request(
            method,
            url,
            json=body if content is None else None,
            content=content,
            headers=headers,
            timeout=timeout_s or getattr(args, "timeout_s", None) or CALL_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        raise ApiError(f"the gateway at {url} did not answer: {exc}", None) from exc
    is_json = "json" in response.headers.get("content-type", "")
    decoded: object = None
    if response.content and is_json:
        try:
            decoded = response.json()
        except ValueError:
            decoded = None
    if response.status_code >= 400:
        detail = error_detail(decoded, response.text.strip() or response.reason_phrase)
        where = f"{method} {path.split('?')[0]}: {response.status_code}"
        raise ApiError(f"{where}: {detail}", response.status_code, decoded)
    if not response.content:
        return None
    return decoded if is_json else response.text


# --------------------------------------------------------------------------- the local draft


class Draft(BaseModel):
    """Changes staged by ``config set``, sent by ``config preview`` and ``config save`` (PUT's body)."""

    model_config = ConfigDict(extra="forbid")

    strategy: str
    assignments: list[AssignmentRequest] = Field(default_factory=list)
    base_revision: int = Field(default=0, description="The saved revision the draft started from.")

    def body(self) -> dict[str, Any]:
        """The PUT /api/system/gpu-config (and POST preview) body."""
        return {
            "strategy": self.strategy,
            "assignments": [a.model_dump(mode="json", exclude_defaults=True) for a in self.assignments],
        }


def draft_path(data_dir: Path) -> Path:
    return data_dir / DRAFT_FILE


def load_draft(path: Path) -> Draft | None:
    """The draft at ``path``, None when there is none; a damaged one is a ``ConfigError`` naming the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return Draft.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a draft gpuplane can read ({exc.error_count()} errors); delete it") from exc


def write_draft(path: Path, draft: Draft) -> None:
    from shared.files import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, draft.model_dump_json(indent=2, exclude_defaults=False) + "\n")


def request_for(a: ServiceAssignment) -> AssignmentRequest | None:
    """What the user chose for a saved service (pinned GPU, budget, disabled); None when the strategy chose all."""
    pinned = a.pinned and bool(a.gpu_indices)
    if not pinned and a.vram_budget_override is None and a.enabled:
        return None
    gpus: dict[str, Any] = {}
    if pinned:
        gpus = {"gpu_indices": a.gpu_indices} if len(a.gpu_indices) > 1 else {"gpu_index": a.gpu_indices[0]}
    return AssignmentRequest(
        service=a.service,
        host=a.host if pinned else None,
        vram_budget_override=a.vram_budget_override,
        enabled=a.enabled,
        **gpus,
    )


def draft_from_config(config: GpuConfigOut) -> Draft:
    """A draft that saves the configuration as it is: its strategy and every choice the user made."""
    kept = [r for r in (request_for(a) for a in config.assignments) if r is not None]
    return Draft(strategy=config.strategy, assignments=kept, base_revision=config.revision)


def stage(
    draft: Draft,
    service: str,
    *,
    gpus: Sequence[int] | None = None,
    auto: bool = False,
    budget_gb: float | None = None,
    host: str | None = None,
    enabled: bool | None = None,
    strategy: str | None = None,
) -> Draft:
    """``draft`` with ``service`` changed as asked. ``budget_gb`` 0 drops the override; ``auto`` unpins it."""
    if gpus and auto:
        raise ConfigError("give --gpu or --auto, not both")
    if not gpus and not auto and budget_gb is None and host is None and enabled is None and strategy is None:
        raise ConfigError("nothing to stage: give --gpu, --auto, --budget, --host, --enable/--disable or --strategy")
    current = next((a for a in draft.assignments if a.service == service), None)
    fields: dict[str, Any] = (
        current.model_dump(exclude={"service"}) if current else {"enabled": True}
    )
    if gpus:
        fields["gpu_index"], fields["gpu_indices"] = (None, tuple(gpus)) if len(gpus) > 1 else (gpus[0], None)
    if auto:
        fields.update(gpu_index=None, gpu_indices=None, host=None)
    if host is not None:
        fields["host"] = host or None
    if budget_gb is not None:
        fields["vram_budget_override"] = budget_gb if budget_gb > 0 else None
    if enabled is not None:
        fields["enabled"] = enabled
    try:
        changed = AssignmentRequest(service=service, **fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{service}: {problems}") from exc
    others = [a for a in draft.assignments if a.service != service]
    # A service left to the strategy in every respect needs no entry: the PUT places it.
    plain = changed.gpu_index is None and changed.gpu_indices is None and changed.vram_budget_override is None
    keep = [] if plain and changed.enabled else [changed]
    order = [a.service for a in draft.assignments]
    merged = sorted([*others, *keep], key=lambda a: order.index(a.service) if a.service in order else len(order))
    return Draft(strategy=strategy or draft.strategy, assignments=merged, base_revision=draft.base_revision)


def check_service(service: str, config: GpuConfigOut) -> str:
    """``service`` if the saved configuration (the catalog) knows it; a ``ConfigError`` listing the valid ones."""
    check_name(service, "service")
    known = [a.service for a in config.assignments]
    if service not in known:
        raise ConfigError(f"unknown service {service!r}; the catalog has: {', '.join(known) or 'no services'}")
    return service


def _gpus(indices: Iterable[int], host: str | None) -> str:
    ids = ",".join(str(i) for i in indices)
    return f"{host}:{ids}" if host else ids


def describe_request(req: AssignmentRequest | None) -> str:
    """A requested placement, in the words ``describe_saved`` uses: ``GPU 1``, ``auto``, budget, disabled."""
    if req is None:
        return "auto"
    if not req.enabled:
        return "disabled"
    indices = req.gpu_indices or ((req.gpu_index,) if req.gpu_index is not None else ())
    where = f"GPU {_gpus(indices, req.host)}" if indices else "auto"
    return where + (f", budget {req.vram_budget_override:.1f} GB" if req.vram_budget_override is not None else "")


def describe_saved(a: ServiceAssignment | None) -> str:
    """What the user chose for a saved service, in ``describe_request``'s words."""
    return describe_request(request_for(a) if a is not None else None)


def draft_changes(draft: Draft, config: GpuConfigOut) -> list[str]:
    """The draft's pending changes against the saved configuration, one line each."""
    out = []
    if draft.strategy != config.strategy:
        out.append(f"strategy: {config.strategy} → {draft.strategy}")
    if draft.base_revision != config.revision:
        out.append(f"(the draft started from revision {draft.base_revision}; revision {config.revision} is saved now)")
    saved = {a.service: a for a in config.assignments}
    wanted = {a.service: a for a in draft.assignments}
    for service in dict.fromkeys([*wanted, *saved]):
        before, after = describe_saved(saved.get(service)), describe_request(wanted.get(service))
        if before != after:
            out.append(f"{service}: {before} → {after}")
    return out


# --------------------------------------------------------------------------- tables


def gb(value: float) -> str:
    return f"{value:.1f} GB"


def budget_cell(a: ServiceAssignment) -> str:
    """The budget a service is told; "adjusted" when it is below the estimate (lowered to fit, or overridden)."""
    if a.vram_budget_gb is None:
        return "-"
    return gb(a.vram_budget_gb) + (" adjusted" if a.vram_budget_gb < a.vram_estimate_gb else "")


def gpu_cell(a: ServiceAssignment, multi_host: bool) -> str:
    """The GPU(s) of a service: pinned ones marked, "none" when it could not be placed."""
    if not a.enabled:
        return "disabled"
    if not a.gpu_indices:
        return "none"
    return _gpus(a.gpu_indices, a.host if multi_host else None) + (" (pinned)" if a.pinned else "")


def assignments_table(assignments: Sequence[ServiceAssignment]) -> list[str]:
    multi_host = len({a.host for a in assignments if a.host}) > 1
    out = [f"  {'Service':<20} {'Model':<30} {'VRAM est.':>9}  {'GPU(s)':<16} {'Budget':<16} Placed by"]
    for a in assignments:
        out.append(
            f"  {a.service:<20} {a.model[:30]:<30} {gb(a.vram_estimate_gb):>9}  {gpu_cell(a, multi_host):<16} "
            f"{budget_cell(a):<16} {a.placed_by}"
        )
    return out


def format_config(config: GpuConfigOut, draft: Draft | None = None, draft_file: Path | None = None) -> str:
    """``config show``: strategy, revision, saved time, the assignments, warnings, and any local draft."""
    saved = config.saved_at.isoformat(timespec="seconds") if config.saved_at else "never (the default plan)"
    out = [f"strategy {config.strategy}   revision {config.revision}   saved {saved}"]
    if config.message:
        out.append(config.message)
    out += ["", *assignments_table(config.assignments)]
    if config.warnings:
        out += ["", "Warnings:", *(f"  - {w}" for w in config.warnings)]
    if draft is not None:
        pending = draft_changes(draft, config)
        where = f" ({draft_file})" if draft_file else ""
        out += ["", f"A local draft exists{where}: `gpuplane config save` sends it, `config preview` shows its plan."]
        out += [f"  {line}" for line in pending] or ["  (no changes from the saved configuration)"]
    return "\n".join(out)


def change_line(d: AssignmentDiff) -> str:
    where = f"{d.before or '-'} → {d.after or '-'}" if d.change != "unchanged" else (d.after or d.before or "-")
    return f"  {MARKS[d.change]} {d.service:<20} {d.change:<9} {where}"


def format_changes(changes: Sequence[AssignmentDiff]) -> list[str]:
    """A diff: one line per changed service (moved and budget lines marked ~), the unchanged ones in one line."""
    changed = [d for d in changes if d.change != "unchanged"]
    same = [d.service for d in changes if d.change == "unchanged"]
    out = [change_line(d) for d in changed] or ["  no changes from the saved configuration"]
    if same:
        out.append(f"    unchanged: {', '.join(same)}")
    return out


def gpu_label(g: GpuPlanLoad, multi_host: bool) -> str:
    return f"{g.host}:{g.index}" if multi_host else str(g.index)


def format_loads(gpus: Sequence[GpuPlanLoad]) -> list[str]:
    multi_host = len({g.host for g in gpus}) > 1
    out = [f"  {'GPU':<10} {'Name':<28} {'Planned / Capacity':>20}  Services"]
    for g in gpus:
        pct = 100 * g.planned_gb / g.capacity_gb if g.capacity_gb else 0.0
        load = f"{g.planned_gb:.1f} / {g.capacity_gb:.1f} GB {pct:3.0f}%"
        over = "  OVERCOMMITTED" if g.overcommitted else ""
        services = ", ".join(g.services) or "-"
        out.append(f"  {gpu_label(g, multi_host):<10} {g.name[:28]:<28} {load:>20}  {services}{over}")
    return out


def format_preview(preview: PlanPreviewOut, *, draft: bool = False) -> str:
    """``config preview``: the changes as a diff, VRAM per GPU, warnings. Nothing is saved."""
    what = f"the local draft (strategy {preview.strategy})" if draft else f"strategy {preview.strategy}"
    fit = "fits" if preview.feasible else "does NOT fit"
    out = [f"Preview of {what}: {fit}; nothing is saved", "", "Changes from the saved configuration:"]
    out += format_changes(preview.changes)
    if preview.gpus:
        out += ["", *format_loads(preview.gpus)]
    if preview.warnings:
        out += ["", "Warnings:", *(f"  - {w}" for w in preview.warnings)]
    if preview.message:
        out += ["", preview.message]
    return "\n".join(out)


def format_saved(saved: GpuConfigSavedOut) -> str:
    config = saved.config
    out = [f"saved revision {config.revision} (strategy {config.strategy}); `gpuplane config apply` applies it", ""]
    out += ["Changes:", *format_changes(saved.changes)]
    if saved.warnings:
        out += ["", "Warnings:", *(f"  - {w}" for w in saved.warnings)]
    return "\n".join(out)


# --------------------------------------------------------------------------- apply status


GpuNames = Mapping[str, str]
"""A GPU's uuid → how a person names it (``0``, or ``box-a:0`` across hosts), from the inventory."""


def gpu_names(gpus: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``GpuNames`` from GET /api/system/gpus's ``gpus``."""
    hosts = {g.get("host") for g in gpus}
    return {
        str(g["uuid"]): (f"{g['host']}:{g['index']}" if len(hosts) > 1 else str(g["index"]))
        for g in gpus
        if g.get("uuid")
    }


def device_list(devices: Sequence[str], names: GpuNames | None = None) -> str:
    """Device ids (CDI names such as ``nvidia.com/gpu=0``, or uuids) as ``GPU 0``; "no GPU" when empty."""
    if not devices:
        return "no GPU"
    ids = (d.rsplit("=", 1)[-1] for d in devices)
    return "GPU " + ",".join((names or {}).get(i, i) for i in ids)


UUID_IN_TEXT = re.compile(r"GPU-[0-9a-fA-F-]{8,}")


def with_gpu_names(text: str, names: GpuNames | None) -> str:
    """``text`` (a run's change or reason) with each GPU uuid it names replaced by the GPU's index."""
    return UUID_IN_TEXT.sub(lambda m: (names or {}).get(m.group(0), m.group(0)), text)


def transitions(before: ApplyRun | None, after: ApplyRun, names: GpuNames | None = None) -> list[str]:
    """One line per service whose state changed between two looks at a run (every service on the first look)."""
    seen = {s.service: s.state for s in before.services} if before is not None and before.id == after.id else {}
    out = []
    for s in after.services:
        if seen.get(s.service) == s.state:
            continue
        moves = f"{device_list(s.devices_before, names)} → {device_list(s.devices_after, names)}"
        line = f"{s.service:<16} {s.state.value:<11} {moves}"
        out.append(line + (f"  ({s.error})" if s.error else ""))
    return out


def status_line(status: ApplyStatusOut) -> str:
    """One line: a run in progress, what stops an apply, drift, or how the last run ended."""
    run = status.run
    if run is not None and run.state.active:
        return f"run {run.id} in progress ({run.kind.value}, {run.state.value})"
    if status.problems:
        return "apply is not set up: " + "; ".join(status.problems)
    if status.drift:
        found = ", ".join(f"{d.service} runs {d.actual}, expected {d.expected}" for d in status.drift)
        return "drift found: " + found
    if run is None:
        return "nothing applied yet: `gpuplane config apply` applies the saved configuration"
    if run.state is RunState.SUCCEEDED:
        return "All services running" + (f" (revision {status.applied_revision})" if status.applied_revision else "")
    return f"last run {run.id} {run.state.value}" + (f": {run.error}" if run.error else "")


def format_run(run: ApplyRun, names: GpuNames | None = None) -> list[str]:
    rev = f", revision {run.revision}" if run.revision is not None else ""
    out = [f"run {run.id}: {run.kind.value}{rev}, {run.state.value}, started by {run.trigger}"]
    if run.finished_at:
        out[0] += f", finished {run.finished_at.isoformat(timespec='seconds')}"
    for s in run.services:
        err = f"  {s.error}" if s.error else ""
        moves = f"{device_list(s.devices_before, names)} → {device_list(s.devices_after, names)}"
        out.append(f"  {s.service:<16} {s.state.value:<11} {with_gpu_names(s.change, names):<10} {moves}{err}")
    out += [f"  touched {t.service}: {with_gpu_names(t.why, names)}" for t in run.touched]
    out += [f"  note: {n}" for n in run.notes]
    if run.error:
        out.append(f"  error: {run.error}")
    return out


def format_status(status: ApplyStatusOut, names: GpuNames | None = None) -> str:
    out = [status_line(status)]
    if status.run is not None:
        out += ["", *format_run(status.run, names)]
    if status.drift:
        out += ["", "Drift:"]
        out += [f"  {d.service}: expected {d.expected}, runs {d.actual}  {'; '.join(d.differences)}".rstrip()
                for d in status.drift]
    out += ["", f"compose: {status.compose}"]
    return "\n".join(out)


def wait_for_run(
    run_id: str,
    fetch: Callable[[], ApplyStatusOut],
    *,
    timeout_s: float,
    emit: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    interval_s: float = POLL_INTERVAL_S,
    names: GpuNames | None = None,
) -> int:
    """Poll the status until run ``run_id`` ends, emitting each service's transitions; 0 if it succeeded."""
    deadline = clock() + timeout_s
    last: ApplyRun | None = None
    while True:
        status = fetch()
        run = status.run
        if run is not None and run.id == run_id:
            for line in transitions(last, run, names):
                emit(line)
            last = run
            if not run.state.active:
                emit(status_line(status) if run.state is RunState.SUCCEEDED else f"run {run.id} {run.state.value}"
                     + (f": {run.error}" if run.error else ""))
                return 0 if run.state is RunState.SUCCEEDED else 1
        if clock() >= deadline:
            emit(f"run {run_id} still going after {timeout_s:g} s; follow it with `gpuplane config status`")
            return 1
        sleep(interval_s)


# --------------------------------------------------------------------------- audit, backups


def relative_time(at: datetime, now: datetime) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago``."""
    seconds = max(0, int((now - at) / timedelta(seconds=1)))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def format_audit(records: Sequence[AuditRecord], now: datetime) -> str:
    """Newest first: when (relative and ISO), who, what, from where, on what."""
    if not records:
        return "No audit records."
    out = [f"{'When':>11}  {'At (UTC)':<25} {'Actor':<14} {'Action':<13} {'Outcome':<8} {'Address':<16} Target"]
    for r in sorted(records, key=lambda r: (r.at, r.id or 0), reverse=True):
        target = " ".join(f"{k}={v}" for k, v in sorted(r.target.items()))
        detail = f"  {r.detail}" if r.detail else ""
        out.append(
            f"{relative_time(r.at, now):>11}  {r.at.isoformat(timespec='seconds'):<25} {r.actor[:14]:<14} "
            f"{r.action.value:<13} {r.outcome:<8} {r.address or '-':<16} {target or '-'}{detail}"
        )
    return "\n".join(out)


def format_restore(restored: RestoreOut, source: str) -> str:
    if restored.dry_run:
        head = f"dry run of {source} (backup version {restored.version}): nothing was changed"
    else:
        head = f"restored {source} (backup version {restored.version}) as revision {restored.revision}"
    out = [head, "", "Changes:", *format_changes(restored.changes)]
    if restored.warnings:
        out += ["", "Warnings:", *(f"  - {w}" for w in restored.warnings)]
    if restored.notes:
        out += ["", "Notes:", *(f"  - {n}" for n in restored.notes)]
    return "\n".join(out)


# --------------------------------------------------------------------------- shell completion


def _walk(parser: argparse.ArgumentParser, path: str, table: dict[str, tuple[list[str], list[str]]],
          choices: dict[str, list[str]]) -> None:
    """Fill ``table[path]`` with (subcommands, options and positional choices) and ``choices["path|--opt"]``."""
    subs: list[str] = []
    words: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                subs.append(name)
                _walk(child, f"{path} {name}".strip(), table, choices)
        elif action.option_strings:
            words += action.option_strings
            if action.choices:
                for opt in action.option_strings:
                    choices[f"{path}|{opt}"] = [str(c) for c in action.choices]
        elif action.choices:
            words += [str(c) for c in action.choices]
    table[path] = (subs, words)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A bash (or zsh, through bashcompinit) completion script for every command, subcommand and option."""
    table: dict[str, tuple[list[str], list[str]]] = {}
    choices: dict[str, list[str]] = {}
    _walk(parser, "", table, choices)
    prog = parser.prog
    fn = "_" + prog.replace("-", "_")
    subs_cases = "\n".join(f'        "{p}") echo "{" ".join(s)}" ;;' for p, (s, _) in sorted(table.items()) if s)
    word_cases = "\n".join(f'        "{p}") echo "{" ".join([*s, *w])}" ;;' for p, (s, w) in sorted(table.items()))
    choice_cases = "\n".join(f'        "{k}") echo "{" ".join(v)}" ;;' for k, v in sorted(choices.items()))
    script = f"""# {shell} completion for {prog}, made by `{prog} completion {shell}`.
{fn}_subcommands() {{
    case "$1" in
{subs_cases}
    esac
}}
{fn}_words() {{
    case "$1" in
{word_cases}
    esac
}}
{fn}_choices() {{
    case "$1" in
{choice_cases}
    esac
}}
{fn}() {{
    local cur prev path w i opts
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        case " $({fn}_subcommands "$path") " in
            *" $w "*) path="${{path:+$path }}$w" ;;
        esac
    done
    opts="$({fn}_choices "$path|$prev")"
    if [ -z "$opts" ]; then
        opts="$({fn}_words "$path")"
    fi
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    if [ -z "$opts" ] || [[ "$prev" == --*file* || "$prev" == --output || "$prev" == --fleet ]]; then
        COMPREPLY+=($(compgen -f -- "$cur"))
    fi
}}
complete -F {fn} {prog}
"""
    if shell == "zsh":
        return f"#compdef {prog}\nautoload -U +X bashcompinit && bashcompinit\n" + script
    return script


# --------------------------------------------------------------------------- commands


def _data_dir() -> Path:
    from shared.settings import CommonSettings

    return CommonSettings().data_dir


def _get_config(args: argparse.Namespace) -> GpuConfigOut:
    return GpuConfigOut.model_validate(api_call("GET", CONFIG_PATH, args))


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def run_show(args: argparse.Namespace) -> int:
    raw = api_call("GET", CONFIG_PATH, args)
    path = draft_path(_data_dir())
    draft = load_draft(path)
    if args.json:
        _print_json({**raw, "draft": draft.body() if draft else None})
        return 0
    print(format_config(GpuConfigOut.model_validate(raw), draft, path))
    return 0


def _preview(args: argparse.Namespace, draft: Draft | None, strategy: str | None) -> dict[str, Any]:
    if draft is None:
        query = f"?{urlencode({'strategy': strategy})}" if strategy else ""
        answer: dict[str, Any] = api_call("GET", f"{CONFIG_PATH}/preview{query}", args)
        return answer
    body = draft.body()
    if strategy:
        body["strategy"] = strategy
    answer = api_call("POST", f"{CONFIG_PATH}/preview", args, body)
    return answer


def run_preview(args: argparse.Namespace) -> int:
    draft = load_draft(draft_path(_data_dir()))
    raw = _preview(args, draft, args.strategy)
    if args.json:
        _print_json(raw)
    else:
        print(format_preview(PlanPreviewOut.model_validate(raw), draft=draft is not None))
    return 0


def run_set(args: argparse.Namespace) -> int:
    config = _get_config(args)
    service = check_service(args.service, config)
    path = draft_path(_data_dir())
    draft = load_draft(path) or draft_from_config(config)
    enabled = True if args.enable else (False if args.disable else None)
    if args.host is not None:
        check_name(args.host, "host")
    draft = stage(
        draft, service, gpus=args.gpu, auto=args.auto, budget_gb=args.budget, host=args.host,
        enabled=enabled, strategy=args.strategy,
    )
    # Preview before writing: a draft the planner refuses (422) is not kept.
    preview = PlanPreviewOut.model_validate(_preview(args, draft, None))
    write_draft(path, draft)
    staged = next((a for a in draft.assignments if a.service == service), None)
    print(f"staged in {path}: {service} {describe_request(staged)}")
    print(format_preview(preview, draft=True))
    return 0


def run_save(args: argparse.Namespace) -> int:
    path = draft_path(_data_dir())
    draft = load_draft(path)
    if draft is None:
        if not args.strategy:
            raise ConfigError("no draft to save: stage changes with `gpuplane config set`, or give --strategy")
        draft = Draft(strategy=args.strategy)
    elif args.strategy:
        draft = draft.model_copy(update={"strategy": args.strategy})
    saved = GpuConfigSavedOut.model_validate(api_call("PUT", CONFIG_PATH, args, draft.body()))
    path.unlink(missing_ok=True)
    print(format_saved(saved))
    return 0


def run_discard(args: argparse.Namespace) -> int:
    path = draft_path(_data_dir())
    if not path.exists():
        print("no local draft")
        return 0
    path.unlink()
    print(f"discarded the draft {path}")
    return 0


def _gpu_names(args: argparse.Namespace) -> dict[str, str]:
    """The GPUs' names by uuid; none (uuids are shown as they are) when the inventory is not there yet."""
    try:
        return gpu_names(api_call("GET", "/api/system/gpus", args)["gpus"])
    except ApiError as exc:
        log.debug("GPU names unavailable: %s", exc)
        return {}


def _status(args: argparse.Namespace, timeout_s: float | None = None) -> ApplyStatusOut:
    return ApplyStatusOut.model_validate(api_call("GET", f"{CONFIG_PATH}/status", args, timeout_s=timeout_s))


def _start_run(args: argparse.Namespace, what: str) -> int:
    call_s = min(args.timeout_s, CALL_TIMEOUT_S)
    try:
        raw = api_call("POST", f"{CONFIG_PATH}/{what}", args, timeout_s=call_s)
        accepted = RunAcceptedOut.model_validate(raw)
    except ApiError as exc:
        if exc.status == 503:
            detail = error_detail(exc.body, str(exc))
            raise ApiError(f"{what} is not set up: {detail}", exc.status, exc.body) from exc
        raise
    rev = f" (revision {accepted.revision})" if accepted.revision is not None else ""
    print(f"run {accepted.run_id}: {accepted.kind}{rev} {accepted.state}", flush=True)
    if not args.wait:
        print("follow it with `gpuplane config status` (or --wait)")
        return 0
    return wait_for_run(
        accepted.run_id,
        lambda: _status(args, call_s),
        timeout_s=args.timeout_s,
        emit=lambda s: print(s, flush=True),
        names=_gpu_names(args),
    )


def run_apply(args: argparse.Namespace) -> int:
    return _start_run(args, "apply")


def run_rollback(args: argparse.Namespace) -> int:
    return _start_run(args, "rollback")


def run_status(args: argparse.Namespace) -> int:
    status = _status(args)
    if args.json:
        _print_json(status.model_dump(mode="json"))
    else:
        print(format_status(status, _gpu_names(args)))
    return 0


def run_export(args: argparse.Namespace) -> int:
    text = api_call("GET", "/api/system/backup", args)
    if not isinstance(text, str):
        text = json.dumps(text, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    from shared.files import write_atomic

    write_atomic(args.output, text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def run_import(args: argparse.Namespace) -> int:
    try:
        content = args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from exc
    query = urlencode({"dry_run": "true" if args.dry_run else "false"})
    raw = api_call(
        "POST", f"/api/system/backup/restore?{query}", args, content=content, content_type="application/yaml"
    )
    print(format_restore(RestoreOut.model_validate(raw), str(args.file)))
    return 0


CONFIG_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "show": run_show,
    "preview": run_preview,
    "set": run_set,
    "save": run_save,
    "discard": run_discard,
    "apply": run_apply,
    "status": run_status,
    "rollback": run_rollback,
    "export": run_export,
    "import": run_import,
}


def run_config(args: argparse.Namespace) -> int:
    return CONFIG_ACTIONS[args.action](args)


def run_audit(args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit), **({"action": args.action} if args.action else {})}
    raw = api_call("GET", f"/api/system/audit?{urlencode(query)}", args)
    if args.json:
        _print_json(raw)
        return 0
    print(format_audit(AuditPageOut.model_validate(raw).records, utc_now()))
    return 0


# --------------------------------------------------------------------------- the parsers


def add_gateway_flags(parser: argparse.ArgumentParser, *, timeout: bool = True) -> None:
    parser.add_argument("--api-url", default=None,
                        help="the gateway (default http://127.0.0.1:$GPUPLANE_HTTP_PORT); the admin token comes "
                        "from GPUPLANE_API_TOKEN, else $GPUPLANE_DATA_DIR/secrets/admin-token")
    if timeout:
        parser.add_argument("--timeout-s", type=float, default=CALL_TIMEOUT_S,
                            help="give up on each gateway call after this long")


def add_config_parser(sub: Any) -> None:
    """``gpuplane config ...``: one subcommand per console action."""
    from shared.contracts import AuditAction

    config = sub.add_parser(
        "config", help="show, preview, stage, save, apply and roll back the GPU configuration (the console's actions)",
        description="The web console's GPU configuration actions. Changes are staged in a local draft "
        "($GPUPLANE_DATA_DIR/cli-draft.json) by `set`, checked by `preview`, sent by `save` and applied by `apply`.",
    )
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")

    show = actions.add_parser("show", help="the saved strategy, assignments and warnings (and the local draft)")
    show.add_argument("--json", action="store_true", help="print the API's answer as JSON")

    preview = actions.add_parser("preview", help="what the draft (or a strategy) would assign; saves nothing")
    preview.add_argument("--strategy", default=None,
                         help="preview this strategy (default: the draft's, else the saved one)")
    preview.add_argument("--json", action="store_true", help="print the API's answer as JSON")

    st = actions.add_parser("set", help="stage a change to one service in the local draft, then preview it")
    st.add_argument("service", help="a service of the catalog (see `gpuplane config show`)")
    st.add_argument("--gpu", type=int, action="append", default=None, metavar="N",
                    help="pin it to GPU N (repeat for a service that needs several GPUs)")
    st.add_argument("--auto", action="store_true", help="unpin it: the strategy chooses its GPU")
    st.add_argument("--budget", type=float, default=None, metavar="GB",
                    help="its VRAM budget in GB (overrides the estimate; 0 drops the override)")
    st.add_argument("--host", default=None, help="the host of its GPU (needed only when several hosts have GPUs)")
    st.add_argument("--disable", action="store_true", help="do not run it")
    st.add_argument("--enable", action="store_true", help="run it again")
    st.add_argument("--strategy", default=None, help="also change the draft's strategy")

    save = actions.add_parser("save", help="save the local draft (PUT /api/system/gpu-config) and delete it")
    save.add_argument("--strategy", default=None, help="save this strategy (with the draft, or alone)")

    actions.add_parser("discard", help="delete the local draft")

    for name, text in (("apply", "recreate the containers whose GPUs changed"),
                       ("rollback", "restore the configuration applied before the last run")):
        p = actions.add_parser(name, help=text)
        p.add_argument("--wait", action="store_true", help="follow the run, one line per service state change; "
                       "exit 0 when it succeeds, 1 when it fails or is rolled back")
        p.add_argument("--timeout-s", type=float, default=600.0,
                       help=f"with --wait: stop following the run after this long (exit 1); each gateway call "
                       f"waits at most {CALL_TIMEOUT_S:g} s of it")
        add_gateway_flags(p, timeout=False)

    status = actions.add_parser("status", help="the run in progress (or the last one), drift, what stops an apply")
    status.add_argument("--json", action="store_true", help="print the API's answer as JSON")

    export = actions.add_parser("export", help="the whole configuration as a YAML backup")
    export.add_argument("--output", type=Path, default=None, help="write it to this file (default: stdout)")

    imp = actions.add_parser("import", help="restore a YAML backup (see the changes first with --dry-run)")
    imp.add_argument("file", type=Path, help="a file made by `gpuplane config export`")
    imp.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")

    for p in (show, preview, st, save, actions.choices["discard"], status, export, imp):
        add_gateway_flags(p)

    audit = sub.add_parser("audit", help="the audit trail: who changed what, when, from where (newest first)")
    audit.add_argument("--action", default=None, choices=[a.value for a in AuditAction], help="only this action")
    audit.add_argument("--limit", type=int, default=50, help="at most this many records (1 to 500)")
    audit.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    add_gateway_flags(audit)

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script. bash: add `source <(gpuplane completion bash)` to ~/.bashrc, or "
        "save it as ~/.local/share/bash-completion/completions/gpuplane. zsh: add "
        "`source <(gpuplane completion zsh)` to ~/.zshrc.",
    )
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete in")
