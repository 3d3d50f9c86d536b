"""The request lifecycle, pure: budgets, give-ups, batches and answers, driven by an explicit clock."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.router.core.lifecycle import (
    Answer,
    Delivered,
    Lifecycle,
    LifecycleRules,
    NoWorker,
    Send,
)
from services.router.core.policies import make_policy
from services.router.core.pools import PoolSettings
from services.router.core.queue import retry_after_s
from shared.contracts import InferenceKind, InferenceRequest, Priority, Route
from shared.errors import GpuplaneError, InvalidRequest, NotFound, OperationFailed, Overloaded
from shared.modelgroups import ModelCatalog
from tests.builders import make_worker_status

CATALOG = ModelCatalog.model_validate(
    {
        "groups": [
            {"id": "ga", "vram_gb": 8, "load_time_s": 5, "models": [{"id": "chat-a", "latency_s": 0.5}]},
            {"id": "ge", "vram_gb": 1, "load_time_s": 1, "models": [{"id": "embed", "kind": "embedding"}]},
        ]
    }
)


@dataclass
class FakeWaiter:
    """Stands in for an asyncio future: keeps what it was given."""

    result: Any = None
    error: BaseException | None = None
    finished: bool = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, result: Any) -> None:
        self.result, self.finished = result, True

    def set_exception(self, exception: BaseException) -> None:
        self.error, self.finished = exception, True


@dataclass
class Recorder:
    """The core's observer, keeping every event."""

    events: list[tuple[str, ...]] = field(default_factory=list)

    def rejected(self, reason: str) -> None:
        self.events.append(("rejected", reason))

    def retried(self, why: str) -> None:
        self.events.append(("retried", why))

    def queue_changed(self, depths: dict[str, int]) -> None:
        """Not recorded: it changes on every call."""

    def placed(self, route: Route, device: str, waited_s: float, priority: Priority, batch: int) -> None:
        self.events.append(("placed", route.value, device, str(batch)))

    def circuit(self, worker_id: str, closed: bool, text: str) -> None:
        self.events.append(("circuit", worker_id, "closed" if closed else "open"))


def core(pool: dict[str, Any] | None = None, **rules: Any) -> tuple[Lifecycle, Recorder]:
    recorder = Recorder()
    lifecycle = Lifecycle.build(
        CATALOG,
        make_policy("affinity"),
        LifecycleRules(**({"embedding_batch_window_s": 0.1} | rules)),
        PoolSettings(**({"worker_timeout_s": 1000.0} | (pool or {}))),
        seed=1,
        observer=recorder,
    )
    return lifecycle, recorder


def request(model: str = "chat-a", kind: InferenceKind = InferenceKind.CHAT, **fields: Any) -> InferenceRequest:
    return InferenceRequest(request_id=uuid.uuid4().hex, kind=kind, model=model, body={"model": model}, **fields)


def worker(lifecycle: Lifecycle, worker_id: str, now: float = 0.0, **fields: Any) -> None:
    status = make_worker_status(
        worker_id,
        device=fields.pop("device", f"cuda:{len(lifecycle.pools.workers)}"),
        models=("chat-a", "embed"),
        slots=fields.pop("slots", 4),
        **fields,
    )
    lifecycle.pools.on_status(status, now)


def delivered(send: Send, bodies: tuple[Any, ...] = (b"{}",)) -> Delivered:
    status = send.record.status
    return Delivered(bodies, status.worker_id, status.device, status.host, "ga", service_s=0.5)


def test_an_answer_reaches_its_waiter_with_how_it_was_placed() -> None:
    lifecycle, recorder = core()
    worker(lifecycle, "w0")
    waiter = FakeWaiter()
    lifecycle.submit(request(), waiter, now=10.0)
    [send] = lifecycle.pump(now=10.0)
    lifecycle.answered(send, delivered(send), now=12.0)
    answer = waiter.result
    assert isinstance(answer, Answer)
    assert (answer.worker_id, answer.attempts, answer.batch_size, answer.body) == ("w0", 1, 1, b"{}")
    assert answer.queued_s == pytest.approx(1.5)  # 2 s in all, 0.5 s of it served
    assert lifecycle.decisions[0][1] is answer
    assert ("placed", send.placement.route.value, "cuda:0", "1") in recorder.events


@dataclass(frozen=True)
class BudgetCase:
    name: str
    lost: bool
    rules: dict[str, int]
    attempts_before_answer: int
    """How many sends fail before the request is answered with the failure."""


BUDGETS = [
    BudgetCase("one retry after a failure", lost=False, rules={"retry_attempts": 1}, attempts_before_answer=2),
    BudgetCase("no retry allowed", lost=False, rules={"retry_attempts": 0}, attempts_before_answer=1),
    BudgetCase(
        "two requeues after a lost worker", lost=True, rules={"lost_worker_requeues": 2}, attempts_before_answer=3
    ),
]


@pytest.mark.parametrize("case", BUDGETS, ids=[c.name for c in BUDGETS])
def test_retry_and_requeue_budgets(case: BudgetCase) -> None:
    lifecycle, recorder = core(**case.rules)
    for i in range(4):
        worker(lifecycle, f"w{i}")
    waiter = FakeWaiter()
    lifecycle.submit(request(), waiter, now=0.0)
    tried: list[str] = []
    for attempt in range(1, 10):
        [send] = lifecycle.pump(now=float(attempt))
        tried.append(send.placement.worker_id)
        assert send.pending.attempt == attempt
        lifecycle.failed(send, OperationFailed("boom"), now=float(attempt), lost=case.lost)
        if waiter.done():
            break
    assert len(tried) == case.attempts_before_answer
    assert isinstance(waiter.error, OperationFailed)
    assert f"after {case.attempts_before_answer} attempt(s)" in str(waiter.error)
    if not case.lost:
        assert len(set(tried)) == len(tried), "a retry goes to another worker"
    retried = [e for e in recorder.events if e[0] == "retried"]
    assert len(retried) == case.attempts_before_answer - 1


def test_a_failure_after_streaming_began_is_not_sent_elsewhere() -> None:
    lifecycle, _ = core(retry_attempts=3)
    worker(lifecycle, "w0")
    worker(lifecycle, "w1")
    waiter = FakeWaiter()
    lifecycle.submit(request(), waiter, now=0.0, sink=object())
    [send] = lifecycle.pump(now=0.0)
    send.pending.committed = True
    lifecycle.failed(send, OperationFailed("engine died"), now=1.0, lost=True)
    assert isinstance(waiter.error, OperationFailed) and "after streaming began" in str(waiter.error)
    assert lifecycle.pump(now=1.0) == []


def test_a_retry_with_nowhere_else_to_go_is_answered_at_once() -> None:
    lifecycle, _ = core(retry_attempts=1)
    worker(lifecycle, "w0")
    waiter = FakeWaiter()
    lifecycle.submit(request(), waiter, now=0.0)
    [send] = lifecycle.pump(now=0.0)
    lifecycle.failed(send, OperationFailed("boom"), now=1.0, lost=False)
    assert lifecycle.pump(now=1.0) == []
    assert isinstance(waiter.error, OperationFailed) and "no other worker can take it" in str(waiter.error)


@pytest.mark.parametrize(
    ("waited_s", "answered"), [(14.9, False), (15.0, True)], ids=["before the limit", "at the limit"]
)
def test_a_request_nobody_can_take_is_given_up_after_the_timeout(waited_s: float, answered: bool) -> None:
    lifecycle, recorder = core(unplaceable_timeout_s=15.0)
    waiter = FakeWaiter()
    lifecycle.submit(request(), waiter, now=100.0)
    assert lifecycle.pump(now=100.0) == []
    silent, sends = lifecycle.tick(now=100.0 + waited_s)
    assert (silent, sends) == ([], [])
    assert waiter.done() is answered
    if answered:
        assert isinstance(waiter.error, NoWorker) and "for 15 s" in str(waiter.error)
        assert ("rejected", "no_worker") in recorder.events


def test_a_busy_worker_is_waited_for_without_a_deadline() -> None:
    lifecycle, _ = core({"worker_queue_limit": 0}, unplaceable_timeout_s=1.0)
    worker(lifecycle, "w0", slots=1, request_count=1)
    lifecycle.submit(request(), FakeWaiter(), now=0.0)
    [first] = lifecycle.pump(now=0.0)
    second = FakeWaiter()
    lifecycle.submit(request(), second, now=0.0)
    lifecycle.tick(now=0.5)
    lifecycle.tick(now=60.0)
    assert not second.done()
    lifecycle.answered(first, delivered(first), now=61.0)
    [send] = lifecycle.pump(now=61.0)
    assert send.pending.waiters == [second]


@pytest.mark.parametrize(
    ("queued", "slots", "latency_s", "expected"),
    [(0, 4, 0.5, 1.0), (10, 2, 0.5, 2.5), (100, 0, 2.0, 200.0), (3, 3, 0.0, 1.0)],
)
def test_retry_after_is_the_queue_ahead_over_the_slots(
    queued: int, slots: int, latency_s: float, expected: float
) -> None:
    assert retry_after_s(queued, slots, latency_s) == pytest.approx(expected)


def test_a_full_queue_is_overloaded_with_a_retry_time() -> None:
    lifecycle, recorder = core({"worker_queue_limit": 0}, queue_limit=2)
    worker(lifecycle, "w0", slots=1, latency_avg_s=2.0, request_count=1)
    for _ in range(3):  # one out at the worker, two queued
        lifecycle.submit(request(), FakeWaiter(), now=0.0)
        lifecycle.pump(now=0.0)
    refused = FakeWaiter()
    lifecycle.submit(request(), refused, now=0.0)
    assert isinstance(refused.error, Overloaded)
    assert refused.error.retry_after_s == pytest.approx(4.0)  # two queued, one slot, 2 s each
    assert ("rejected", "queue_full") in recorder.events


@pytest.mark.parametrize(
    ("model", "kind", "error", "says"),
    [
        ("embed", InferenceKind.CHAT, InvalidRequest, "embedding model: send it to /v1/embeddings"),
        ("chat-a", InferenceKind.EMBEDDING, InvalidRequest, "chat model: send it to /v1/chat/completions"),
    ],
    ids=["an embedding model asked to chat", "a chat model asked for embeddings"],
)
def test_a_model_is_asked_only_for_what_it_does(
    model: str, kind: InferenceKind, error: type[GpuplaneError], says: str
) -> None:
    lifecycle, _ = core()
    with pytest.raises(error, match=says):
        lifecycle.submit(request(model, kind), FakeWaiter(), now=0.0)


def test_an_unknown_model_is_not_found_at_once() -> None:
    lifecycle, recorder = core()
    worker(lifecycle, "w0")
    waiter = FakeWaiter()
    lifecycle.submit(request("nope"), waiter, now=0.0)
    assert lifecycle.pump(now=0.0) == []
    assert isinstance(waiter.error, NotFound) and "chat-a" in str(waiter.error)
    assert ("rejected", "not_found") in recorder.events


def test_embeddings_are_batched_until_the_window_closes() -> None:
    lifecycle, _ = core(embedding_batch_max=4, embedding_batch_window_s=0.1)
    worker(lifecycle, "w0")
    waiters = [FakeWaiter() for _ in range(3)]
    for w in waiters:
        assert lifecycle.submit(request("embed", InferenceKind.EMBEDDING), w, now=0.0) is True
    assert lifecycle.tick(now=0.05)[1] == []
    [send] = lifecycle.tick(now=0.1)[1]
    assert len(send.pending.requests) == 3
    lifecycle.answered(send, delivered(send, (b"a", b"b", b"c")), now=0.2)
    assert [w.result.body for w in waiters] == [b"a", b"b", b"c"]
    assert {w.result.batch_size for w in waiters} == {3}


def test_the_circuit_opens_after_failures_in_a_row_and_is_told() -> None:
    lifecycle, recorder = core({"failure_threshold": 2}, retry_attempts=0)
    worker(lifecycle, "w0")
    for now in (0.0, 1.0):
        lifecycle.submit(request(), FakeWaiter(), now=now)
        [send] = lifecycle.pump(now=now)
        lifecycle.failed(send, OperationFailed("boom"), now=now, lost=False)
    assert ("circuit", "w0", "open") in recorder.events


def test_a_lost_worker_is_no_circuit_failure() -> None:
    lifecycle, recorder = core({"failure_threshold": 1}, lost_worker_requeues=5)
    worker(lifecycle, "w0")
    lifecycle.submit(request(), FakeWaiter(), now=0.0)
    [send] = lifecycle.pump(now=0.0)
    lifecycle.failed(send, OperationFailed("gone"), now=0.0, lost=True)
    assert not [e for e in recorder.events if e[0] == "circuit"]
    assert lifecycle.pump(now=0.0), "sent again to the same worker"


def test_a_refusal_answers_the_client_and_spares_the_worker() -> None:
    lifecycle, recorder = core()
    worker(lifecycle, "w0")
    waiter = FakeWaiter()
    lifecycle.submit(request(), waiter, now=0.0)
    [send] = lifecycle.pump(now=0.0)
    lifecycle.refused(send, InvalidRequest("max_tokens too large"), now=0.0)
    assert isinstance(waiter.error, InvalidRequest)
    assert lifecycle.pools.workers["w0"].outstanding == 0
    assert not [e for e in recorder.events if e[0] == "circuit"]


def test_streamed_embeddings_are_refused() -> None:
    lifecycle, _ = core()
    with pytest.raises(InvalidRequest, match="cannot be streamed"):
        lifecycle.submit(request("embed", InferenceKind.EMBEDDING), FakeWaiter(), now=0.0, sink=object())


def test_held_requests_include_the_queued_and_the_batched() -> None:
    lifecycle, _ = core()
    queued, batched = request(), request("embed", InferenceKind.EMBEDDING)
    lifecycle.submit(queued, FakeWaiter(), now=0.0)
    lifecycle.submit(batched, FakeWaiter(), now=0.0)
    assert lifecycle.held_request_ids() == {queued.request_id, batched.request_id}
