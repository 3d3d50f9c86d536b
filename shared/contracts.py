"""Every message that crosses the bus.

Each message is a frozen pydantic v2 model that forbids unknown fields and carries a
versioned ``type`` literal (``gpuplane.<thing>.v<N>``). A breaking change adds a new
model with a new version; the old one stays until nobody sends it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.names import Name

GPU_INDEX_MAX = 1023
"""No machine has more GPUs than this; a bigger index is a mistake, not a GPU."""
REVISION_MAX = 2**31 - 1
"""Revisions are PostgreSQL integers."""
GpuIndex = Annotated[int, Field(ge=0, le=GPU_INDEX_MAX)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Frozen(BaseModel):
    """Base for every value object that travels: immutable and strict about its fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Message(Frozen):
    """Base for top-level bus messages; subclasses pin ``type`` to a literal."""

    type: str


M = TypeVar("M", bound=Message)


# --------------------------------------------------------------------------- GPUs


class InventorySource(StrEnum):
    """Where an inventory came from. ``simulated`` must never be mistaken for real hardware."""

    NVML = "nvml"
    NVIDIA_SMI = "nvidia-smi"
    SIMULATED = "simulated"
    NONE = "none"


class Gpu(Frozen):
    """One GPU as the detector saw it. Index is nvidia-smi's (PCI bus) order.

    ``*_mb`` fields are MiB (2**20 bytes), the unit nvidia-smi prints as "MiB".
    """

    index: int = Field(ge=0, le=GPU_INDEX_MAX)
    uuid: str
    name: str
    pci_bus_id: str
    vram_total_mb: int = Field(ge=0)
    vram_used_mb: int = Field(ge=0)
    vram_free_mb: int = Field(ge=0)
    utilization_percent: float | None = Field(default=None, ge=0, le=100)
    compute_capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$")
    supports_fp16: bool = False
    supports_bf16: bool = False
    temperature_c: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    sm_count: int | None = None
    max_sm_clock_mhz: int | None = None
    nvlink_peers: tuple[int, ...] = ()
    healthy: bool = True
    health_reason: str | None = None


class InventoryChangeKind(StrEnum):
    APPEARED = "appeared"
    DISAPPEARED = "disappeared"
    UNHEALTHY = "unhealthy"
    RECOVERED = "recovered"


class InventoryChange(Frozen):
    kind: InventoryChangeKind
    uuid: str
    index: int = Field(ge=0, le=GPU_INDEX_MAX)
    name: str
    reason: str | None = None


class Inventory(Message):
    """The full GPU inventory of one host, published periodically and at once on a change."""

    type: Literal["gpuplane.inventory.v1"] = "gpuplane.inventory.v1"
    host: Name
    source: InventorySource
    gpus: tuple[Gpu, ...] = ()
    detected_at: datetime = Field(default_factory=utc_now)
    sequence: int = Field(default=0, ge=0)
    changes: tuple[InventoryChange, ...] = ()
    problems: tuple[str, ...] = ()
    """Why a backend was skipped or failed, in words a user can act on."""
    fleet_file: str | None = None

    @property
    def status_message(self) -> str:
        if not self.gpus:
            detail = "; ".join(self.problems)
            return f"No GPUs detected ({detail})" if detail else "No GPUs detected"
        count = len(self.gpus)
        unhealthy = sum(1 for gpu in self.gpus if not gpu.healthy)
        sick = f", {unhealthy} unhealthy" if unhealthy else ""
        return f"{count} GPU{'' if count == 1 else 's'} ({self.source.value}){sick}"


class GpuHealthChanged(Message):
    """A GPU appeared, disappeared, turned unhealthy or recovered."""

    type: Literal["gpuplane.gpu_health.v1"] = "gpuplane.gpu_health.v1"
    host: Name
    source: InventorySource
    change: InventoryChange
    at: datetime = Field(default_factory=utc_now)


class RescanRequest(Message):
    type: Literal["gpuplane.detector.rescan.v1"] = "gpuplane.detector.rescan.v1"
    reason: str = "requested"


# --------------------------------------------------------------------------- services


class ServiceName(StrEnum):
    DETECTOR = "detector"
    PLANNER = "planner"
    ORCHESTRATOR = "orchestrator"
    ROUTER = "router"
    API = "api"
    WORKER = "worker"


class Heartbeat(Message):
    """Liveness of one service instance, published every few seconds."""

    type: Literal["gpuplane.heartbeat.v1"] = "gpuplane.heartbeat.v1"
    service: ServiceName
    instance: str
    host: Name
    pid: int
    started_at: datetime
    at: datetime = Field(default_factory=utc_now)
    version: str


class HealthRequest(Message):
    type: Literal["gpuplane.health.request.v1"] = "gpuplane.health.request.v1"


class HealthReply(Message):
    type: Literal["gpuplane.health.reply.v1"] = "gpuplane.health.reply.v1"
    service: ServiceName
    instance: str
    host: Name
    ok: bool
    started_at: datetime
    version: str
    details: dict[str, str] = Field(default_factory=dict)


class ErrorReply(Message):
    """What a responder sends back instead of its normal reply when the request cannot be served."""

    type: Literal["gpuplane.error.v1"] = "gpuplane.error.v1"
    code: Literal["bad_request", "unavailable", "internal", "conflict", "not_found", "overloaded", "forbidden"]
    message: str
    field: str | None = None
    """Dotted path of the request field at fault (``assignments.2.service``), for bad requests."""
    context: dict[str, str] = Field(default_factory=dict)
    """Facts a client may act on, e.g. the ``run_id`` of the run that is in the way of a conflict."""


# --------------------------------------------------------------------------- planner
#
# VRAM on the planner's messages is in GB, as users write it in catalogs and budgets; one GB is
# 1024 MiB here (the unit nvidia-smi's MiB figures divide into), so a "4 GB" card is 4096 MiB.


class StrategyInfo(Frozen):
    name: str
    description: str
    recommended: bool = False


class AssignmentRequest(Frozen):
    """One service as the user wants it: a GPU (or none: placed by the strategy), a budget."""

    service: Name
    gpu_index: GpuIndex | None = Field(default=None, description="The GPU; null lets the strategy choose.")
    gpu_indices: tuple[GpuIndex, ...] | None = Field(
        default=None,
        max_length=GPU_INDEX_MAX + 1,
        description="For a service that needs several GPUs: all of them, on one host.",
    )
    host: Name | None = Field(default=None, description="Required only when several hosts have GPUs.")
    vram_budget_override: float | None = Field(default=None, gt=0, le=4096, description="VRAM budget in GB.")
    enabled: bool = True


class ServiceAssignment(Frozen):
    """Where one service runs in a plan or in the saved configuration."""

    service: Name
    model: str
    host: Name | None
    gpu_indices: tuple[int, ...]
    """Empty when the service could not be placed (no GPUs, or none fits its needs)."""
    gpu_uuids: tuple[str, ...] = ()
    vram_estimate_gb: float
    vram_budget_gb: float | None = None
    """The budget the service is told (VRAM_BUDGET_GB); set when lowered or overridden."""
    vram_budget_override: float | None = None
    """What the user asked for, if anything."""
    pinned: bool = False
    """True when the user chose the GPU; false when the strategy did."""
    placed_by: str
    enabled: bool = True
    budget_adjustable: bool = False
    """The catalog lets its VRAM budget be set (filled in by the planner from the catalog; not stored)."""

    @property
    def gpu_index(self) -> int | None:
        return self.gpu_indices[0] if self.gpu_indices else None


class GpuPlanLoad(Frozen):
    """What a plan puts on one GPU."""

    host: Name
    index: int = Field(ge=0, le=GPU_INDEX_MAX)
    name: str
    capacity_gb: float
    planned_gb: float
    services: tuple[str, ...]
    overcommitted: bool


class AssignmentDiff(Frozen):
    service: Name
    change: Literal["added", "moved", "budget", "removed", "unchanged"]
    before: str | None
    after: str | None


class GpuConfig(Frozen):
    """The configuration the planner keeps (or, before the first save, would keep)."""

    strategy: str
    saved: bool
    saved_at: datetime | None = None
    revision: int = 0
    assignments: tuple[ServiceAssignment, ...] = ()
    warnings: tuple[str, ...] = ()


class ConfigGetRequest(Message):
    type: Literal["gpuplane.planner.config.get.v1"] = "gpuplane.planner.config.get.v1"


class ConfigReply(Message):
    type: Literal["gpuplane.planner.config.v1"] = "gpuplane.planner.config.v1"
    config: GpuConfig
    strategies: tuple[StrategyInfo, ...]
    message: str | None = None
    """Set when there is something to say about the fleet, e.g. "No GPUs detected"."""


class ConfigPutRequest(Message):
    type: Literal["gpuplane.planner.config.put.v1"] = "gpuplane.planner.config.put.v1"
    strategy: str
    assignments: tuple[AssignmentRequest, ...] = ()


class ConfigSaved(Message):
    type: Literal["gpuplane.planner.config.saved.v1"] = "gpuplane.planner.config.saved.v1"
    success: bool = True
    warnings: tuple[str, ...] = ()
    config: GpuConfig
    changes: tuple[AssignmentDiff, ...] = ()


class PreviewRequest(Message):
    type: Literal["gpuplane.planner.preview.request.v1"] = "gpuplane.planner.preview.request.v1"
    strategy: str | None = None
    """None: the saved strategy (or the default before the first save)."""
    assignments: tuple[AssignmentRequest, ...] | None = None
    """None: plan as a save without assignments would. Given: as a save with these would (the console's
    form before it is saved)."""


class PlanPreview(Message):
    type: Literal["gpuplane.planner.preview.v1"] = "gpuplane.planner.preview.v1"
    strategy: str
    assignments: tuple[ServiceAssignment, ...]
    warnings: tuple[str, ...]
    gpus: tuple[GpuPlanLoad, ...]
    changes: tuple[AssignmentDiff, ...]
    feasible: bool
    """False when some service could not be placed, or a GPU is over capacity."""
    message: str | None = None


class ConfigChanged(Message):
    """Published after every save: a UI (or the orchestrator) sees the new configuration."""

    type: Literal["gpuplane.config.changed.v1"] = "gpuplane.config.changed.v1"
    config: GpuConfig
    changes: tuple[AssignmentDiff, ...]
    at: datetime = Field(default_factory=utc_now)


class ConfigRestoreRequest(Message):
    """Save an earlier revision's assignments again, as a new revision (a rollback does this)."""

    type: Literal["gpuplane.planner.config.restore.v1"] = "gpuplane.planner.config.restore.v1"
    revision: int = Field(ge=1, le=REVISION_MAX)


# --------------------------------------------------------------------------- orchestrator
#
# A *run* applies one target configuration to the compose project's containers. Services the
# target changes go pending -> recreating -> healthy | failed; a failed run restores what it
# touched (rolled_back). Runs live in PostgreSQL; every transition is also an event.


class RunKind(StrEnum):
    APPLY = "apply"
    """POST /apply: the saved configuration."""
    ROLLBACK = "rollback"
    """POST /rollback: the configuration applied before the last successful run that changed something."""
    CONVERGE = "converge"
    """Start-up: the saved configuration, when the containers do not run it."""


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """Failed and not restored (GPUPLANE_ROLLBACK=manual, or the restore failed too)."""
    ROLLED_BACK = "rolled_back"
    """Failed, and every container it touched runs the previous configuration again."""

    @property
    def active(self) -> bool:
        return self in (RunState.QUEUED, RunState.RUNNING, RunState.ROLLING_BACK)


class ServiceState(StrEnum):
    PENDING = "pending"
    RECREATING = "recreating"
    HEALTHY = "healthy"
    FAILED = "failed"
    RESTORED = "restored"
    """Rolled back to the previous configuration after the run failed."""


class ServiceProgress(Frozen):
    """One service a run changes."""

    service: Name
    state: ServiceState = ServiceState.PENDING
    change: str
    """Why it is in the run, e.g. "GPU GPU-aa.. -> GPU-bb..", "VRAM_BUDGET_GB 6.8 -> 3.5"."""
    devices_before: tuple[str, ...] = ()
    devices_after: tuple[str, ...] = ()
    container_before: str | None = None
    container_after: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


class TouchedContainer(Frozen):
    """A container the compose command removed or created, and why (it may not be the one asked for)."""

    service: Name
    container_before: str | None
    container_after: str | None
    why: str
    at: datetime


class ApplyRun(Frozen):
    id: str
    kind: RunKind
    trigger: str
    """Who started it: api (POST /apply or /rollback) or startup (convergence)."""
    state: RunState = RunState.QUEUED
    revision: int | None = None
    """The configuration revision this run applies (None: a configuration from before any save)."""
    previous_revision: int | None = None
    """The revision the containers ran before (None: not applied by gpuplane before)."""
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    services: tuple[ServiceProgress, ...] = ()
    touched: tuple[TouchedContainer, ...] = ()
    notes: tuple[str, ...] = ()
    """Things worth knowing: skipped services, a restart of the orchestrator mid-run and what it did."""
    rollback_of: str | None = None
    """For a rollback run: the run whose configuration it undoes."""


class Drift(Frozen):
    """A container that does not run what the applied configuration says (changed by hand, say)."""

    service: Name
    container: str | None
    expected: str
    """The GPUs the applied configuration gives it."""
    actual: str
    """The GPUs the container has."""
    differences: tuple[str, ...] = ()
    """Every difference, e.g. "GPU none -> GPU-a4..", "VRAM_BUDGET_GB 3.5 -> unset"."""


class ApplyRequest(Message):
    type: Literal["gpuplane.orchestrator.apply.request.v1"] = "gpuplane.orchestrator.apply.request.v1"


class RollbackRequest(Message):
    type: Literal["gpuplane.orchestrator.rollback.request.v1"] = "gpuplane.orchestrator.rollback.request.v1"


class RunAccepted(Message):
    """The run was recorded and queued; follow it with the status or the progress events."""

    type: Literal["gpuplane.orchestrator.accepted.v1"] = "gpuplane.orchestrator.accepted.v1"
    run: ApplyRun


class StatusRequest(Message):
    type: Literal["gpuplane.orchestrator.status.request.v1"] = "gpuplane.orchestrator.status.request.v1"


class OrchestratorStatus(Message):
    type: Literal["gpuplane.orchestrator.status.v1"] = "gpuplane.orchestrator.status.v1"
    run: ApplyRun | None
    """The run in progress, else the last one."""
    applied_revision: int | None = None
    """The configuration revision the containers were last brought to."""
    drift: tuple[Drift, ...] = ()
    compose: str
    """The compose command, project and files, as the orchestrator runs them."""
    problems: tuple[str, ...] = ()
    """What stops an apply now (the compose command missing, no CDI spec, ...)."""


class RunProgress(Message):
    """Published on every transition of a run or of one of its services."""

    type: Literal["gpuplane.orchestrator.progress.v1"] = "gpuplane.orchestrator.progress.v1"
    run: ApplyRun
    service: Name | None = None
    """The service whose state changed; None for a change of the run's own state."""
    state: str
    """The new state of ``service`` (pending, recreating, healthy, failed, restored), else of the run."""
    at: datetime = Field(default_factory=utc_now)


class ApplyWork(Message):
    """A work-queue item: carry out this recorded run (redelivered if the orchestrator dies mid-run)."""

    type: Literal["gpuplane.orchestrator.work.v1"] = "gpuplane.orchestrator.work.v1"
    run_id: str


# --------------------------------------------------------------------------- router and workers
#
# A worker serves inference for model groups on one device (``cuda:N`` of one host, or ``cpu``).
# Workers say what they hold and how loaded they are; routers decide from those figures, so
# several routers agree on load without talking to each other.


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class InferenceKind(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"


class Route(StrEnum):
    """Why a request went where it went (the ``X-Gpuplane-Route`` header)."""

    EXCLUSIVE = "exclusive"
    AFFINITY = "affinity"
    LEAST_LOADED = "least-loaded"
    RETRY = "retry"
    CPU_FALLBACK = "cpu-fallback"


class WorkerState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class EngineSignals(Frozen):
    """An inference engine's own load figures, read from its metrics or slots (None: it does not say)."""

    kind: str = Field(min_length=1, max_length=32)
    """``llamacpp``, ``vllm``, ``ollama``, ``tgi``, or ``openai`` for an engine that says nothing of itself."""
    requests_running: int | None = Field(default=None, ge=0)
    requests_waiting: int | None = Field(default=None, ge=0)
    slots_total: int | None = Field(default=None, ge=1)
    """Requests it decodes at once (llama.cpp's slots; vLLM's max_num_seqs when exposed)."""
    kv_cache_usage: float | None = Field(default=None, ge=0, le=1)
    """Fraction of the KV cache in use."""
    prompt_tokens_total: int | None = Field(default=None, ge=0)
    prompt_tokens_cached_total: int | None = Field(default=None, ge=0)
    """Prompt tokens served from its prefix cache (llama.cpp), the figure prefix affinity raises."""
    generation_tokens_per_s: float | None = Field(default=None, ge=0)


class WorkerStatus(Message):
    """A worker's registration and heartbeat: what it holds and how busy it is.

    Sent every ``status_interval_s`` and soon after any change (a request starting or ending, a
    group loading), so routers see load within tens of milliseconds. ``stopped`` is the last one.
    """

    type: Literal["gpuplane.worker.status.v1"] = "gpuplane.worker.status.v1"
    worker_id: Name
    host: Name
    device: str
    """``cuda:N`` (N is the detector's index on ``host``) or ``cpu``."""
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    gpu_name: str | None = None
    backend: str
    state: WorkerState
    slots: int = Field(ge=1)
    """Requests it runs at once."""
    in_flight: int = Field(ge=0)
    queue_depth: int = Field(ge=0)
    groups_loaded: tuple[str, ...] = ()
    current_group: str | None = None
    cpu_cached_groups: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    """Models it can serve (every model of every group it may load)."""
    latency_avg_s: float = Field(default=0.0, ge=0)
    """Moving average of the time to serve one request, group loads excluded."""
    error_count: int = Field(default=0, ge=0)
    request_count: int = Field(default=0, ge=0)
    group_switches: int = Field(default=0, ge=0)
    exclusive_request: str | None = None
    """The request that holds this worker's GPU exclusively, if any."""
    vram_total_mb: int | None = Field(default=None, ge=0)
    vram_used_mb: int | None = Field(default=None, ge=0)
    utilization_percent: float | None = Field(default=None, ge=0, le=100)
    """Busy fraction since the last status (the simulated backend's stand-in for NVML's)."""
    speed: float | None = Field(default=None, gt=0)
    """The device's speed relative to the reference GPU (1.0; the catalog's latencies are for it): routers'
    guess of a request's time on a worker that has not measured one yet. None: unknown (taken as 1.0)."""
    engine_url: str | None = None
    """The engine's OpenAI-compatible base URL (as an OpenAI client's ``base_url``: ``http://host:port/v1``) a
    data plane sends this worker's requests to directly; None: only through the worker (``WorkerTask`` over NATS)."""
    engine: EngineSignals | None = None
    """What the engine itself reports (llama.cpp ``/slots`` and ``llamacpp:*`` metrics, vLLM's ``vllm:*``
    metrics), when the worker can read them: requests other clients sent it directly count too."""
    sequence: int = Field(default=0, ge=0)
    at: datetime = Field(default_factory=utc_now)


class ServiceApi(Frozen):
    """A catalog service's OpenAI-compatible API (``x-gpuplane: {api: {...}}``): the router sends to it once placed."""

    port: int = Field(ge=1, le=65535)
    """The port the server listens on inside the container (its published host port is found)."""
    path: str = Field(default="/v1", pattern=r"^/[A-Za-z0-9._~/-]*$", max_length=200)
    models: tuple[str, ...] = Field(min_length=1, max_length=64)
    """The model names it serves (what clients put in ``model``)."""
    kind: Literal["llamacpp", "vllm", "ollama", "tgi", "openai"] = "openai"


class ServiceEndpoint(Frozen):
    """One placed service's API where it runs now."""

    service: Name
    host: Name
    device: str
    """``cuda:N`` from the applied assignment (the first GPU of a multi-GPU service)."""
    url: str
    """OpenAI base URL (``http://host:port/v1``)."""
    models: tuple[str, ...]
    kind: str
    container: str = ""
    """The container's id (12 characters): a new one after every recreate."""


class ServiceEndpoints(Message):
    """Every placed service with an API that runs healthy on ``host``, as of ``at``."""

    type: Literal["gpuplane.orchestrator.endpoints.v1"] = "gpuplane.orchestrator.endpoints.v1"
    host: Name
    endpoints: tuple[ServiceEndpoint, ...] = ()
    problems: tuple[str, ...] = ()
    """Services with an API that have no endpoint, and why (no published port, not running...)."""
    at: datetime = Field(default_factory=utc_now)


class EndpointsQuery(Message):
    type: Literal["gpuplane.orchestrator.endpoints.query.v1"] = "gpuplane.orchestrator.endpoints.query.v1"


class EndpointDrain(Message):
    """Stop sending new requests to ``service``'s engine and say when its requests have finished."""

    type: Literal["gpuplane.agents.drain.v1"] = "gpuplane.agents.drain.v1"
    service: Name
    timeout_s: float = Field(default=60.0, gt=0, le=3600)


class EndpointDrained(Message):
    type: Literal["gpuplane.agents.drained.v1"] = "gpuplane.agents.drained.v1"
    service: Name
    agents: int = Field(ge=0)
    """Agents of the service that were drained (0: the router was not sending to it)."""
    idle: bool
    """Whether its engine had finished every request (False: ``timeout_s`` ran out first)."""


class InferenceRequest(Message):
    """An OpenAI-style request as the gateway received it, for a router to place."""

    type: Literal["gpuplane.router.infer.v1"] = "gpuplane.router.infer.v1"
    request_id: str
    kind: InferenceKind
    model: str
    body: dict[str, Any]
    """The request body as the client sent it (OpenAI shape), gpuplane's own fields removed."""
    priority: Priority = Priority.NORMAL
    exclusive_gpu: str | None = None
    """``cuda:N``, or ``host/cuda:N`` where several hosts have workers."""
    stream_subject: str | None = None
    """Where to send ``StreamChunk``s; set for streaming requests only."""
    received_at: datetime = Field(default_factory=utc_now)


class WorkerTask(Message):
    """What a router sends one worker: one request, or a batch of embedding requests."""

    type: Literal["gpuplane.worker.task.v1"] = "gpuplane.worker.task.v1"
    task_id: str
    request_ids: tuple[str, ...]
    kind: InferenceKind
    model: str
    group: str
    bodies: tuple[dict[str, Any], ...]
    """One body per request id (a batch has several)."""
    priority: Priority = Priority.NORMAL
    exclusive: bool = False
    stream_subject: str | None = None
    """Where the worker sends ``StreamChunk``s (the router's relay subject)."""
    attempt: int = Field(default=1, ge=1)


class WorkerResult(Message):
    """A worker's answer to a ``WorkerTask``: one OpenAI-shaped body per request."""

    type: Literal["gpuplane.worker.result.v1"] = "gpuplane.worker.result.v1"
    task_id: str
    worker_id: Name
    device: str
    host: Name
    group: str
    bodies: tuple[dict[str, Any], ...]
    loaded_group: bool = False
    """True when the group had to be loaded (or reloaded) for this task: a group switch."""
    load_s: float = Field(default=0.0, ge=0)
    service_s: float = Field(default=0.0, ge=0)


class InferenceResult(Message):
    """The router's answer: the body for the client and who served it, and why."""

    type: Literal["gpuplane.router.result.v1"] = "gpuplane.router.result.v1"
    request_id: str
    body: dict[str, Any] | None = None
    """None for a streamed request (the body went out as chunks)."""
    worker_id: Name
    device: str
    host: Name
    route: Route
    group: str
    reason: str
    attempts: int = Field(default=1, ge=1)
    batch_size: int = Field(default=1, ge=1)
    queued_s: float = Field(default=0.0, ge=0)


class StreamChunk(Message):
    """One piece of a streamed answer. ``seq`` counts from 0; the last chunk has ``done`` or ``error``.

    The first chunk a router relays names the worker, device and route, so the gateway can send
    its headers before the body.
    """

    type: Literal["gpuplane.router.chunk.v1"] = "gpuplane.router.chunk.v1"
    request_id: str
    seq: int = Field(ge=0)
    data: dict[str, Any] | None = None
    """An OpenAI ``chat.completion.chunk`` / ``text_completion`` object."""
    done: bool = False
    error: str | None = None
    worker_id: Name | None = None
    device: str | None = None
    host: Name | None = None
    route: Route | None = None
    attempt: int = Field(default=1, ge=1)


class WorkerView(Frozen):
    """One worker as a router sees it: the worker's own figures plus the router's judgement."""

    status: WorkerStatus
    alive: bool
    gpu_healthy: bool
    circuit: Literal["closed", "open", "half_open"]
    eligible: bool
    why_not: str | None = None


class DeviceStats(Frozen):
    """``/api/gpu_stats`` figures of one device (memory in GB, as the older clients expect)."""

    host: Name
    device: str
    name: str | None = None
    utilization: float
    memory_used: float
    memory_total: float
    memory_percent: float
    peak_utilization: float
    healthy: bool = True


class ModelInfo(Frozen):
    id: str
    kind: InferenceKind
    small: bool = False


class GroupInfo(Frozen):
    group_id: str
    models: tuple[ModelInfo, ...]
    vram_gb: float
    load_time_s: float


class RouterStateRequest(Message):
    type: Literal["gpuplane.router.state.request.v1"] = "gpuplane.router.state.request.v1"


class RoutingDecision(Frozen):
    """Where a router sent one answered request, and why (the console's "last decisions")."""

    at: datetime
    request_id: str
    model: str
    group: str
    worker_id: Name
    host: Name
    device: str
    route: Route
    reason: str
    attempts: int = Field(default=1, ge=1)
    batch_size: int = Field(default=1, ge=1)
    queued_s: float = Field(default=0.0, ge=0)


class RouterState(Message):
    """A router's view of the pools, for ``/api/gpu_stats``, ``/api/models`` and ``/api/queue``."""

    type: Literal["gpuplane.router.state.v1"] = "gpuplane.router.state.v1"
    router: str
    policy: str
    workers: tuple[WorkerView, ...]
    devices: tuple[DeviceStats, ...]
    groups: tuple[GroupInfo, ...]
    queued: dict[str, int]
    """Requests waiting in this router, by priority."""
    queue_limit: int
    in_flight: int
    decisions: tuple[RoutingDecision, ...] = ()
    """Its last answered requests' placements, newest first."""
    at: datetime = Field(default_factory=utc_now)


class RouterHeldQuery(Message):
    """A gateway asks every router: which of these inference requests are you still working on?"""

    type: Literal["gpuplane.router.held.request.v1"] = "gpuplane.router.held.request.v1"
    request_ids: tuple[str, ...] = Field(max_length=100_000)


class RouterHeld(Message):
    """One router's answer: the requests of the query it holds (queued, placed or streaming)."""

    type: Literal["gpuplane.router.held.v1"] = "gpuplane.router.held.v1"
    router: str
    request_ids: tuple[str, ...] = ()


class WorkerHeldQuery(Message):
    """A router asks one worker: which of these tasks do you still hold (queued or running)?"""

    type: Literal["gpuplane.worker.held.request.v1"] = "gpuplane.worker.held.request.v1"
    task_ids: tuple[str, ...] = Field(max_length=100_000)


class WorkerHeld(Message):
    type: Literal["gpuplane.worker.held.v1"] = "gpuplane.worker.held.v1"
    worker_id: Name
    task_ids: tuple[str, ...] = ()


# --------------------------------------------------------------------------- audit


class AuditAction(StrEnum):
    """What changed. The names are subject tokens: ``gpuplane.audit.<action>``."""

    CONFIG_SAVE = "config_save"
    CONFIG_RESTORE = "config_restore"
    APPLY = "apply"
    ROLLBACK = "rollback"
    RESCAN = "rescan"
    KEY_CREATE = "key_create"
    KEY_REVOKE = "key_revoke"
    LOGIN = "login"
    AUTH_FAILURE = "auth_failure"


class AuditRecord(Message):
    """One entry of the audit trail: who changed what, when, from where (kept in PostgreSQL, published on NATS)."""

    type: Literal["gpuplane.audit.v1"] = "gpuplane.audit.v1"
    id: int | None = None
    """The row's id in PostgreSQL once stored (None on the event published before the write)."""
    at: datetime = Field(default_factory=utc_now)
    action: AuditAction
    actor: str
    """The admin token's name, an inference key's name, or ``unknown`` for a failed authentication."""
    actor_kind: Literal["admin", "session", "key", "unknown"]
    address: str | None = None
    """The client's IP address."""
    outcome: Literal["ok", "refused", "failed"] = "ok"
    target: dict[str, str] = Field(default_factory=dict)
    """What was changed: ``revision``, ``run_id``, ``key``, ``path``..."""
    detail: str | None = None


AnyMessage = Annotated[
    Inventory
    | GpuHealthChanged
    | RescanRequest
    | Heartbeat
    | HealthRequest
    | HealthReply
    | ErrorReply
    | ConfigGetRequest
    | ConfigReply
    | ConfigPutRequest
    | ConfigSaved
    | PreviewRequest
    | PlanPreview
    | ConfigChanged
    | ConfigRestoreRequest
    | ApplyRequest
    | RollbackRequest
    | RunAccepted
    | StatusRequest
    | OrchestratorStatus
    | RunProgress
    | ApplyWork
    | WorkerStatus
    | InferenceRequest
    | WorkerTask
    | WorkerResult
    | InferenceResult
    | StreamChunk
    | RouterStateRequest
    | RouterState
    | RouterHeldQuery
    | RouterHeld
    | WorkerHeldQuery
    | WorkerHeld
    | AuditRecord,
    Field(discriminator="type"),
]
_ANY = TypeAdapter(AnyMessage)


def parse_any(data: bytes | str) -> Message:
    """Decode any known message by its ``type``; raises ``pydantic.ValidationError`` otherwise."""
    return _ANY.validate_json(data)


def message_types() -> dict[str, type[Message]]:
    """Map of every ``type`` literal to its model (for docs and tests)."""
    result: dict[str, type[Message]] = {}
    for model in (
        Inventory,
        GpuHealthChanged,
        RescanRequest,
        Heartbeat,
        HealthRequest,
        HealthReply,
        ErrorReply,
        ConfigGetRequest,
        ConfigReply,
        ConfigPutRequest,
        ConfigSaved,
        PreviewRequest,
        PlanPreview,
        ConfigChanged,
        ConfigRestoreRequest,
        ApplyRequest,
        RollbackRequest,
        RunAccepted,
        StatusRequest,
        OrchestratorStatus,
        RunProgress,
        ApplyWork,
        WorkerStatus,
        InferenceRequest,
        WorkerTask,
        WorkerResult,
        InferenceResult,
        StreamChunk,
        RouterStateRequest,
        RouterState,
        RouterHeldQuery,
        RouterHeld,
        WorkerHeldQuery,
        WorkerHeld,
        AuditRecord,
    ):
        result[model.model_fields["type"].default] = model
    return result
