"""Settings of the router service."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from services.router.core.policies import check_policy_name
from services.router.core.policies.affinity import DEFAULT_GIVE_WAY_FACTOR
from shared.settings import CommonSettings


class RouterSettings(CommonSettings):
    """How requests are placed, retried, queued and batched."""

    routing_policy: str = Field(
        default="affinity", description="affinity (default), p2c, round_robin, random or least_connections."
    )
    give_way_factor: float = Field(
        default=DEFAULT_GIVE_WAY_FACTOR,
        ge=1.0,
        description="Affinity gives way when the holder would take this many times longer.",
    )
    prefix_affinity: bool = Field(
        default=True,
        description="affinity and p2c: a chat or completion whose prompt starts like a recent one's (1000+ "
        "characters) goes to the engine that served that one (its cache holds the prefix), unless much busier.",
    )
    model_groups_file: Path = Field(default=Path("config/model_groups.yml"), description="The model-group catalog.")
    worker_timeout_s: float = Field(
        default=3.0, gt=0, description="A worker silent this long is gone: its requests go elsewhere."
    )
    worker_queue_limit: int = Field(
        default=1000,
        ge=0,
        description="Requests a worker may queue beyond its slots; the rest wait in the router. Deep worker "
        "queues let affinity keep a group's requests on its holder (docs/benchmarks.md, Router).",
    )
    circuit_failure_threshold: int = Field(default=5, ge=1, description="Failures in a row that open a circuit.")
    circuit_reset_s: float = Field(default=60.0, gt=0, description="How long an open circuit waits for a probe.")
    retry_attempts: int = Field(default=1, ge=0, description="Retries on another worker after a failure.")
    lost_worker_requeues: int = Field(
        default=3, ge=0, description="Times a request may move on because its worker died (not counted as retries)."
    )
    queue_limit: int = Field(default=2048, ge=1, description="Requests this router queues before answering 429.")
    unplaceable_timeout_s: float = Field(
        default=15.0, gt=0, description="How long a request waits when no worker that serves it is up."
    )
    task_timeout_s: float = Field(default=600.0, gt=0, description="Longest a worker may take over one request.")
    max_in_flight_requests: int = Field(default=4096, ge=1, description="Requests handled at once by this router.")
    embedding_batch_max: int = Field(default=4, ge=1, description="Embedding requests per batch (1: no batching).")
    embedding_batch_window_s: float = Field(default=0.1, ge=0, description="How long a batch waits to fill.")
    stream_tail_s: float = Field(default=5.0, gt=0, description="How long to wait for a stream's last chunks.")
    seed: int | None = Field(default=None, description="Seed of the policies' randomness (tests, benchmarks).")
    answer_check_interval_s: float = Field(
        default=5.0, gt=0, description="How often to ask workers about tasks whose answers are long in coming."
    )
    answer_check_after_s: float = Field(
        default=5.0, ge=0, description="Tasks out this long are asked about (their answer may have been lost)."
    )
    answer_grace_s: float = Field(
        default=2.0, gt=0, description="A task its worker no longer holds is lost if unanswered this long after."
    )

    @field_validator("routing_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        return check_policy_name(value)
