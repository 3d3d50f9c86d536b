"""Finding answers that were lost on the way back: pure, time passed in.

A request/reply over NATS has no delivery guarantee: when NATS or the process that holds a request
restarts, the request (or its answer) can vanish and its caller would wait for its whole timeout.
So a caller with requests out for a while asks the holders which of them they still hold (a router
asks its workers, a gateway asks every router). One no holder claims is a suspect; a suspect still
unanswered ``grace_s`` later (its answer would have arrived by then if it was only late) is lost,
and the caller sends it again or answers with an error. Both the router and the gateway use this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class AnswerWatch:
    """Which outstanding requests to ask about, and which are lost."""

    check_after_s: float
    """Requests out longer than this are asked about (younger ones may not have arrived yet)."""
    grace_s: float
    """A request nobody holds is lost only if its answer has not come this long after."""
    _suspects: dict[str, float] = field(default_factory=dict)

    def due(self, outstanding: Mapping[str, float], now: float) -> list[str]:
        """The ids (of ``id -> sent at``) old enough to ask about, oldest first."""
        old = [(sent, rid) for rid, sent in outstanding.items() if now - sent >= self.check_after_s]
        return [rid for _, rid in sorted(old)]

    def heard(self, asked: Iterable[str], held: Iterable[str], now: float) -> None:
        """What the holders said of ``asked``: those in ``held`` are fine, the rest are suspects from ``now``."""
        holding = set(held)
        for rid in asked:
            if rid in holding:
                self._suspects.pop(rid, None)
            else:
                self._suspects.setdefault(rid, now)

    def lost(self, outstanding: Iterable[str], now: float) -> list[str]:
        """Suspects still outstanding ``grace_s`` after nobody held them; forgotten once returned."""
        still = set(outstanding)
        for rid in [r for r in self._suspects if r not in still]:
            del self._suspects[rid]  # answered in the meantime
        found = [rid for rid, since in self._suspects.items() if now - since >= self.grace_s]
        for rid in found:
            del self._suspects[rid]
        return found

    def forget(self, rid: str) -> None:
        self._suspects.pop(rid, None)
