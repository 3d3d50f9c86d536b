"""HTTP response bodies (OpenAPI). Bus contracts live in shared.contracts, not here."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import (
    ApplyRun,
    AssignmentDiff,
    AssignmentRequest,
    AuditRecord,
    Drift,
    EngineSignals,
    Gpu,
    GpuConfig,
    GpuPlanLoad,
    Priority,
    RoutingDecision,
    ServiceAssignment,
    StrategyInfo,
)
from shared.names import Name


class GpuOut(Gpu):
    """One GPU as the API shows it: the detector's fields plus its host."""

    host: str


class HostOut(BaseModel):
    host: str
    source: str
    gpu_count: int
    detected_at: datetime
    sequence: int
    problems: list[str] = Field(default_factory=list)
    fleet_file: str | None = None


class GpusOut(BaseModel):
    gpus: list[GpuOut]
    source: str = Field(description="nvml, nvidia-smi, simulated, none, or mixed across hosts.")
    message: str
    hosts: list[HostOut]


class DependencyOut(BaseModel):
    ok: bool | None = Field(description="None when the dependency is not configured.")
    detail: str


class ServiceHealthOut(BaseModel):
    ok: bool
    instances: int
    last_heartbeat_at: datetime | None
    seconds_since_heartbeat: float | None


class HealthOut(BaseModel):
    status: str = Field(description="ok, or degraded when anything below is not ok.")
    nats: DependencyOut
    database: DependencyOut
    inventory: DependencyOut
    services: dict[str, ServiceHealthOut]


class ErrorOut(BaseModel):
    detail: str


class GpuConfigIn(BaseModel):
    """Body of PUT /api/system/gpu-config."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(description="manual, vram_based, latency_optimized, isolation_first or balanced.")
    assignments: list[AssignmentRequest] = Field(
        default_factory=list,
        description="Services whose GPU (or budget) you set; the rest are placed by the strategy. "
        "Empty with a strategy other than manual: the strategy places everything.",
    )


def warnings_by_service(services: Iterable[str], warnings: Iterable[str]) -> dict[str, list[str]]:
    """Each warning under every service it names (the console shows it next to that row); services
    without a warning are left out. A name counts only as a whole name: ``ai-llm`` is not in ``ai-llm-2``."""
    found: dict[str, list[str]] = {}
    texts = list(warnings)
    for service in services:
        pattern = re.compile(rf"(?<![A-Za-z0-9._-]){re.escape(service)}(?![A-Za-z0-9_-])")
        named = [w for w in texts if pattern.search(w)]
        if named:
            found[service] = named
    return found


WARNINGS_BY_SERVICE: Any = Field(
    default_factory=dict, description="The warnings again, under each service they name (for the row it concerns)."
)


class GpuConfigOut(BaseModel):
    strategy: str
    saved: bool = Field(description="False before the first save: the assignments are the default strategy's plan.")
    saved_at: datetime | None
    revision: int
    assignments: list[ServiceAssignment]
    warnings: list[str]
    warnings_by_service: dict[str, list[str]] = WARNINGS_BY_SERVICE
    strategies: list[StrategyInfo]
    message: str | None = Field(default=None, description='e.g. "No GPUs detected".')


class GpuConfigSavedOut(BaseModel):
    success: bool
    warnings: list[str]
    warnings_by_service: dict[str, list[str]] = WARNINGS_BY_SERVICE
    config: GpuConfig
    changes: list[AssignmentDiff]


class PlanPreviewOut(BaseModel):
    strategy: str
    assignments: list[ServiceAssignment]
    warnings: list[str]
    warnings_by_service: dict[str, list[str]] = WARNINGS_BY_SERVICE
    gpus: list[GpuPlanLoad] = Field(description="Planned VRAM per GPU.")
    changes: list[AssignmentDiff] = Field(description="What would change from the saved configuration.")
    feasible: bool
    message: str | None = None


class RunAcceptedOut(BaseModel):
    """Answer to POST /apply and /rollback: the run is recorded and queued."""

    run_id: str
    state: str
    kind: str
    revision: int | None = Field(description="The configuration revision the run applies.")
    status_url: str = Field(description="Follow the run here (or on NATS: gpuplane.orchestrator.progress).")


class ConflictOut(BaseModel):
    detail: str
    run_id: str | None = Field(default=None, description="The run in progress.")


class ApplyStatusOut(BaseModel):
    """GET /status: the run in progress (else the last one), drift, and what stops an apply."""

    run: ApplyRun | None
    applied_revision: int | None = Field(description="The configuration revision the containers were last brought to.")
    drift: list[Drift] = Field(description="Containers that do not run what the override says (changed by hand?).")
    compose: str = Field(description="The compose command, project and files the orchestrator runs.")
    problems: list[str] = Field(description="What stops an apply now; empty when an apply can run.")


# --------------------------------------------------------------------------- access: keys and audit


class KeyIn(BaseModel):
    """Body of POST /api/system/keys."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="Who uses it (shown in metrics and the audit trail); one live key per name.")
    max_priority: Priority | None = Field(
        default=None, description="The highest priority its requests may ask for (none: any)."
    )
    rpm_limit: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Requests per minute (429 past it); none: no limit."
    )


class KeyOut(BaseModel):
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it; the key itself is never shown again.")
    max_priority: Priority | None
    rpm_limit: int | None
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None


class KeyCreatedOut(KeyOut):
    key: str = Field(description="The key. Shown this once: store it now.")


class KeysOut(BaseModel):
    keys: list[KeyOut]


class AuditPageOut(BaseModel):
    records: list[AuditRecord] = Field(description="Newest first.")
    next_before: int | None = Field(
        description="Pass as ?before= for the next (older) page; null when this is the last one."
    )


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=4096, description="The admin token.")


# --------------------------------------------------------------------------- inference (OpenAI-compatible)
#
# parse_body (routes/inference.py) validates each /v1 body against its model below, then forwards the body as the
# client sent it, less gpuplane's own fields: a field not named here passes through untouched (the engine may know
# it); a field named here must have its type. Strict, because the engine gets what the client sent: "5" is not 5.
# A refusal quotes the field's description, so each says what the field allows.

_OPEN = ConfigDict(extra="allow", strict=True)

ChatRole = Literal["system", "user", "assistant", "tool", "developer", "function"]

_NonEmptyText = Annotated[str, Field(min_length=1)]
_TokenIds = Annotated[list[int], Field(min_length=1)]


def _optional(description: str, **constraints: Any) -> Any:
    """An optional field (null is the same as left out, as OpenAI reads it)."""
    return Field(default=None, description=description, **constraints)


class StreamOptionsIn(BaseModel):
    model_config = _OPEN

    include_usage: bool | None = _optional(
        "true or false: true ends the stream with a chunk holding `usage` (and no choices)."
    )


class ChatMessageIn(BaseModel):
    """One message of a chat; fields not named here (audio, refusal...) pass through."""

    model_config = _OPEN

    role: ChatRole = Field(description="Who wrote it: system, user, assistant, tool or developer (function: legacy).")
    content: str | list[dict[str, Any]] | None = _optional(
        "Its text, or a list of content parts (objects: text, image_url...); null on an assistant's tool calls."
    )
    name: str | None = _optional("A name for its author: a string.")
    tool_calls: list[dict[str, Any]] | None = _optional("An assistant's tool calls: a list of objects.")
    tool_call_id: str | None = _optional("The tool call a tool message answers: a string.")


class ResponseFormatIn(BaseModel):
    model_config = _OPEN

    type: str = Field(description="text, json_object or json_schema (with `json_schema`).")


class ToolIn(BaseModel):
    model_config = _OPEN

    type: str = Field(description='"function" (with `function`: name, description, parameters).')
    function: dict[str, Any] | None = _optional("The function: an object with its name, description and parameters.")


class GpuplaneFieldsIn(BaseModel):
    """gpuplane's own fields, taken out of the body before it is forwarded."""

    model_config = _OPEN

    model: str = Field(min_length=1, description="The model to run: a non-empty string (GET /v1/models lists them).")
    priority: str | None = _optional("high, normal (default) or low; also the X-Gpuplane-Priority header.")
    exclusive_gpu: str | None = _optional("Run alone on this GPU: cuda:N, or host/cuda:N where several hosts serve.")


class SamplingIn(GpuplaneFieldsIn):
    """What chat and text completions share."""

    stream: bool | None = Field(default=False, description="true or false: true answers with server-sent events.")
    stream_options: StreamOptionsIn | None = _optional("With `stream`: an object, {include_usage: true or false}.")
    max_tokens: int | None = _optional("The most tokens to generate: an integer of at least 1.", ge=1)
    temperature: float | None = _optional("Sampling temperature: a number from 0 to 2.", ge=0, le=2)
    top_p: float | None = _optional("Nucleus sampling: a number from 0 to 1.", ge=0, le=1)
    n: int | None = _optional("How many choices to generate: an integer from 1 to 128.", ge=1, le=128)
    stop: str | list[str] | None = _optional("Where to stop generating: a string or a list of strings.")
    presence_penalty: float | None = _optional("Penalty on tokens already used: a number from -2 to 2.", ge=-2, le=2)
    frequency_penalty: float | None = _optional(
        "Penalty by how often a token was used: a number from -2 to 2.", ge=-2, le=2
    )
    seed: int | None = _optional("For reproducible sampling: an integer.")
    user: str | None = _optional("Who the end user is: a string.")
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = _optional(
        "Bias per token id: an object whose values are numbers from -100 to 100."
    )


class ChatCompletionIn(SamplingIn):
    """Body of POST /v1/chat/completions (OpenAI's shape)."""

    messages: list[ChatMessageIn] = Field(
        min_length=1, description="The conversation so far: a non-empty list of message objects."
    )
    max_completion_tokens: int | None = _optional("The most tokens to generate: an integer of at least 1.", ge=1)
    logprobs: bool | None = _optional("true or false: true returns each output token's log probability.")
    top_logprobs: int | None = _optional("With `logprobs`: an integer from 0 to 20.", ge=0, le=20)
    response_format: ResponseFormatIn | None = _optional("An object: {type: text, json_object or json_schema}.")
    tools: list[ToolIn] | None = _optional("Tools the model may call: a list of tool objects.")
    tool_choice: str | dict[str, Any] | None = _optional("none, auto, required, or an object naming a tool.")
    parallel_tool_calls: bool | None = _optional("true or false.")


class CompletionIn(SamplingIn):
    """Body of POST /v1/completions (OpenAI's shape)."""

    prompt: (
        str | Annotated[list[str], Field(min_length=1)] | _TokenIds | Annotated[list[_TokenIds], Field(min_length=1)]
    ) = Field(description="A string, or a non-empty list of strings, of token ids or of token-id lists.")
    logprobs: int | None = _optional("Log probabilities of the most likely tokens: an integer from 0 to 5.", ge=0, le=5)
    echo: bool | None = _optional("true or false: true repeats the prompt in the answer.")
    best_of: int | None = _optional("Candidates to choose from: an integer from 1 to 20.", ge=1, le=20)
    suffix: str | None = _optional("Text after the completion: a string.")


class EmbeddingIn(GpuplaneFieldsIn):
    """Body of POST /v1/embeddings (OpenAI's shape); not streamed."""

    input: (
        _NonEmptyText
        | Annotated[list[_NonEmptyText], Field(min_length=1)]
        | _TokenIds
        | Annotated[list[_TokenIds], Field(min_length=1)]
    ) = Field(
        description="A non-empty string, or a non-empty list of non-empty strings, of token ids or of token-id lists."
    )
    encoding_format: Literal["float", "base64"] | None = _optional("float (default) or base64.")
    dimensions: int | None = _optional("Dimensions of the vectors: an integer of at least 1.", ge=1)
    user: str | None = _optional("Who the end user is: a string.")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, not_found_error, rate_limit_error or server_error.")
    param: str | None = Field(description="The body field at fault, if one is.")
    code: str | None = Field(description="gpuplane's reason for errors other than a bad field.")


class OpenAIErrorOut(BaseModel):
    """Errors on /v1 paths, in OpenAI's shape."""

    error: OpenAIErrorDetail


class ModelCardOut(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(description="Unix seconds: when this gateway first listed the model (stable while it runs).")
    owned_by: str = "gpuplane"
    group: str = Field(description="The model group it is loaded with.")
    kind: str = Field(description="chat, completion or embedding.")
    loaded_on_devices: list[str] = Field(description="Devices where its group is loaded now.")


class ModelListOut(BaseModel):
    object: str = "list"
    data: list[ModelCardOut]


# --------------------------------------------------------------------------- router state (older clients)
#
# Device labels are cuda:N (or cpu), written host/cuda:N when the router's devices and workers span several hosts.


class DeviceStatsOut(BaseModel):
    utilization: float = Field(description="Percent.")
    memory_used: float = Field(description="GB.")
    memory_total: float = Field(description="GB.")
    memory_percent: float
    peak_utilization: float = Field(description="Percent.")


class GpuStatsOut(BaseModel):
    """GET /api/gpu_stats. The top-level figures repeat the first GPU's (older clients read only those);
    they are null when no GPU is known (``available`` false)."""

    available: bool
    devices: dict[str, DeviceStatsOut]
    utilization: float | None = None
    memory_used: float | None = None
    memory_total: float | None = None
    memory_percent: float | None = None
    peak_utilization: float | None = None


class GroupDeviceOut(BaseModel):
    device: str
    has_group: bool = Field(description="A live worker on this device holds the group.")
    is_current: bool = Field(description="A live worker on this device has it as its current group.")


class GroupModelOut(BaseModel):
    id: str
    kind: str
    small: bool
    loaded_on_devices: list[str]


class ModelGroupOut(BaseModel):
    group_id: str
    vram_gb: float
    load_time_s: float
    device_info: list[GroupDeviceOut] = Field(description="One per device the router's workers run on.")
    models: list[GroupModelOut]


class ModelGroupsOut(BaseModel):
    """GET /api/models."""

    model_groups: list[ModelGroupOut]


class RouterQueueOut(BaseModel):
    router: str = Field(description="The router instance that answered.")
    policy: str
    queued: dict[str, int] = Field(description="Requests waiting, by priority (high, normal, low).")
    queue_limit: int
    in_flight: int


class WorkerQueueOut(BaseModel):
    worker_id: str
    host: str
    device: str
    backend: str = Field(description="simulated, openai (an engine's agent) or llamacpp (runs llama.cpp itself).")
    engine: EngineSignals | None = Field(
        default=None, description="The engine's own figures (its metrics and slots), when it reports them."
    )
    state: str
    slots: int
    in_flight: int
    queue_size: int
    busy: bool = Field(description="in_flight > 0.")
    groups_loaded: list[str]
    current_group: str | None
    latency_avg_s: float
    error_count: int
    request_count: int
    alive: bool
    gpu_healthy: bool
    circuit: str = Field(description="closed, open or half_open.")
    eligible: bool
    why_not: str | None = Field(description="Why the router would not send it work now.")


class QueueOut(BaseModel):
    """GET /api/queue."""

    router: RouterQueueOut
    workers: list[WorkerQueueOut]
    decisions: list[RoutingDecision] = Field(
        default_factory=list, description="The router's last answered requests: where each went and why, newest first."
    )


class RestoreOut(BaseModel):
    """Answer to POST /api/system/backup/restore."""

    dry_run: bool
    version: int = Field(description="The backup file's format version.")
    strategy: str
    changes: list[AssignmentDiff] = Field(description="What differs from the saved configuration (or did).")
    warnings: list[str]
    notes: list[str] = Field(description="What a restore does not do: keys to make again, settings that differ.")
    revision: int | None = Field(description="The new revision (null on a dry run).")
