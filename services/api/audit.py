"""The audit trail: every change of state made through the gateway, who made it, from where.

A record is taken at once (``record`` never blocks a request), published on NATS
(``gpuplane.audit.<action>``, kept in the events stream) and written to PostgreSQL in the background;
while the database is away, records wait (up to ``max_pending``) and are written when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Literal

from services.api.access import Principal, RateLimiter
from services.api.metrics import GatewayMetrics, gateway_metrics
from services.api.store import AccessStore
from shared.bus.base import Bus
from shared.contracts import AuditAction, AuditRecord, utc_now
from shared.database import DatabaseUnavailable
from shared.errors import BusError, GpuplaneError, RemoteError
from shared.subjects import audit

log = logging.getLogger("gpuplane.api.audit")

CLIENT_CODES = frozenset({"bad_request", "conflict", "not_found", "forbidden"})
"""Error codes that mean the change was refused as asked, not that it failed."""
AUTH_FAILURES_PER_MINUTE = 6
"""Per client address: a flood of bad tokens is counted in metrics, not written row by row."""


class AuditTrail:
    def __init__(
        self,
        *,
        durable: bool,
        max_pending: int = 10_000,
        retry_s: float = 2.0,
        wall: Callable[[], datetime] = utc_now,
        clock: Callable[[], float] = time.monotonic,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """``durable``: a database is configured, so records wait for the store until it is ready."""
        self.store: AccessStore | None = None
        self.bus: Bus | None = None
        self._durable = durable
        self._unpublished: deque[AuditRecord] = deque()
        self._unwritten: deque[AuditRecord] = deque()
        self._max_pending = max_pending
        self._retry_s = retry_s
        self._wall = wall
        self._clock = clock
        self._ready = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._failures = RateLimiter()
        self._metrics = metrics or gateway_metrics()

    def attach(self, store: AccessStore) -> None:
        """The store is ready: write what waited for it."""
        self.store = store
        self._ready.set()

    @property
    def pending(self) -> int:
        return len(self._unwritten)

    def record(
        self,
        action: AuditAction,
        who: Principal | None,
        address: str | None,
        *,
        outcome: Literal["ok", "refused", "failed"] = "ok",
        target: Mapping[str, object] | None = None,
        detail: str | None = None,
    ) -> AuditRecord:
        entry = AuditRecord(
            at=self._wall(),
            action=action,
            actor=who.name if who else "unknown",
            actor_kind=who.kind if who else "unknown",
            address=address,
            outcome=outcome,
            target={k: str(v) for k, v in (target or {}).items() if v is not None},
            detail=detail,
        )
        self._unpublished.append(entry)
        if self._durable:
            if len(self._unwritten) >= self._max_pending:
                self._unwritten.popleft()
                self._metrics.audit_dropped.labels("backlog").inc()
            self._unwritten.append(entry)
        self._metrics.audit_records.labels(action.value, outcome).inc()
        self._metrics.audit_pending.set(len(self._unwritten))
        self._ready.set()
        return entry

    def auth_failure(self, address: str | None, path: str, why: str) -> None:
        """A credential was presented and refused; at most a few records a minute per address."""
        if self._failures.admit(address or "-", AUTH_FAILURES_PER_MINUTE, self._clock()) is not None:
            self._metrics.audit_dropped.labels("auth_failure_rate").inc()
            return
        self.record(AuditAction.AUTH_FAILURE, None, address, outcome="refused", target={"path": path}, detail=why)

    async def run(self) -> None:
        """Publish and write what is pending, for ever (cancelled when the gateway stops)."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self.flush()

    async def flush(self) -> None:
        """Publish every new record, then write what the store can take; the rest waits for the next round."""
        async with self._flushing:  # the background loop and the gateway's shutdown may both flush
            await self._flush()

    async def _flush(self) -> None:
        while self._unpublished:
            entry = self._unpublished.popleft()
            if self.bus is None:
                continue
            try:
                await self.bus.publish(audit(entry.action.value), entry)
            except BusError as exc:
                log.warning("audit record %s not published: %s", entry.action.value, exc)
        while self._unwritten and self.store is not None:
            batch = list(self._unwritten)
            try:
                await asyncio.to_thread(self.store.append, batch)
            except DatabaseUnavailable as exc:
                log.warning("%d audit record(s) wait for the database: %s", len(batch), exc)
                await asyncio.sleep(self._retry_s)
                self._ready.set()  # try again next round, after publishing whatever came meanwhile
                return
            for _ in batch:
                self._unwritten.popleft()
        self._metrics.audit_pending.set(len(self._unwritten))


@asynccontextmanager
async def audited(
    trail: AuditTrail, action: AuditAction, who: Principal, address: str | None
) -> AsyncIterator[dict[str, object]]:
    """Record ``action`` when the block ends: ``ok`` with what the block put in the yielded target (a revision,
    a run id), or ``refused``/``failed`` with the error that ended it."""
    target: dict[str, object] = {}
    try:
        yield target
    except GpuplaneError as exc:
        outcome: Literal["refused", "failed"] = "refused" if exc.reply_code in CLIENT_CODES else "failed"
        if isinstance(exc, RemoteError):
            outcome = "refused" if exc.code in CLIENT_CODES else "failed"
        trail.record(action, who, address, outcome=outcome, target=target, detail=str(exc))
        raise
    trail.record(action, who, address, target=target)
