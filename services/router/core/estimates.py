"""How long one request of a model takes on a worker, learned from the answers this router relays.

Per (worker, model): a moving average of the time one request takes alone, and, where answers carry
OpenAI ``usage``, a least-squares fit ``t = base + prefill x prompt tokens + decode x completion
tokens`` so that a long prompt or a large ``max_tokens`` costs more. Pure: the caller passes every
observation; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

BATCHING_SLOWDOWN = 0.1
"""``k`` of ``t(c) = t1 x (1 + k x (c - 1))``: each further request decoding beside it makes one request 10%
slower on a continuous-batching engine (4 slots busy: 1.3x). Chosen, not learned: it is what makes equal
idle engines share work (the idle one is always quicker) without pretending a busy one is a slow one."""
EWMA_WEIGHT = 0.2
"""Weight of the newest answer in a worker's time for a model (as the worker's own latency average)."""
PRIOR_WEIGHT = 2.0
"""The prior (others' time scaled by speed, else the catalog's) counts as this many answers of the worker's own."""
SETTLED_SAMPLES = 20
"""From this many answers on, a worker's own figure alone counts."""
CHARS_PER_TOKEN = 4.0
"""Prompt characters per token, to size a prompt before any tokenizer has seen it (English, BPE)."""
FIT_MIN_SAMPLES = 8
"""Answers with ``usage`` before the per-token fit is trusted over the plain average."""
FIT_WEIGHT = 0.05
"""Weight of the newest answer in the per-token fit's sums (it follows about the last 20-40 answers)."""
RIDGE = 1e-3
"""Pulls the per-token rates towards 0 when the sizes seen do not vary (all answers alike)."""


def slowdown(concurrency: int, batching: float) -> float:
    """``1 + k x (c - 1)``: how much slower one request runs with ``concurrency`` requests running."""
    return 1.0 + batching * max(0, concurrency - 1)


def _solve3(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None when singular."""
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(3):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][3] / m[i][i] for i in range(3)]


def _features(prompt_tokens: float, completion_tokens: float) -> tuple[float, float, float]:
    # Scaled so the three columns have similar magnitudes (the solve stays well conditioned).
    return (1.0, prompt_tokens / 1000.0, completion_tokens / 100.0)


@dataclass
class TokenFit:
    """Exponentially weighted least squares of seconds over (1, prompt tokens, completion tokens)."""

    xx: list[list[float]] = field(default_factory=lambda: [[0.0] * 3 for _ in range(3)])
    xy: list[float] = field(default_factory=lambda: [0.0] * 3)
    samples: int = 0
    theta: tuple[float, float, float] | None = None

    def add(self, seconds: float, prompt_tokens: float, completion_tokens: float) -> None:
        x = _features(prompt_tokens, completion_tokens)
        keep = 1.0 - FIT_WEIGHT
        for i in range(3):
            self.xy[i] = keep * self.xy[i] + FIT_WEIGHT * x[i] * seconds
            for j in range(3):
                self.xx[i][j] = keep * self.xx[i][j] + FIT_WEIGHT * x[i] * x[j]
        self.samples += 1
        ridged = [row[:] for row in self.xx]
        for i in (1, 2):
            ridged[i][i] += RIDGE * max(self.xx[0][0], 1e-9)
        solved = _solve3(ridged, self.xy)
        self.theta = None if solved is None else (solved[0], solved[1], solved[2])

    def predict(self, prompt_tokens: float, completion_tokens: float) -> float | None:
        if self.theta is None or self.samples < FIT_MIN_SAMPLES:
            return None
        x = _features(prompt_tokens, completion_tokens)
        return sum(t * v for t, v in zip(self.theta, x, strict=True))


@dataclass
class ModelStats:
    """One model on one worker."""

    alone_s: float
    """Moving average of one request's time alone (observed time / slowdown at the concurrency it ran at)."""
    samples: int = 1
    completion_tokens: float | None = None
    """Moving average of the tokens its answers had."""
    fit: TokenFit = field(default_factory=TokenFit)

    def fed(self, alone: float) -> None:
        self.samples += 1
        self.alone_s += max(EWMA_WEIGHT, 1.0 / self.samples) * (alone - self.alone_s)

    def predict(self, prompt_tokens: float, max_tokens: int | None) -> float:
        """This request's time alone: the per-token fit at its size once trusted, else the average."""
        if self.completion_tokens is None:
            return self.alone_s
        completion = self.completion_tokens if max_tokens is None else min(float(max_tokens), self.completion_tokens)
        fitted = self.fit.predict(prompt_tokens, completion)
        # A fit far outside what it saw can go below zero: never trust it below a tenth of the average.
        return self.alone_s if fitted is None else max(fitted, 0.1 * self.alone_s)


@dataclass
class Estimates:
    """Every (worker, model) this router has seen answered."""

    by_model: dict[str, dict[str, ModelStats]] = field(default_factory=dict)
    """model -> worker id -> its figures."""

    def observe(
        self,
        worker_id: str,
        model: str,
        seconds: float,
        *,
        concurrency: int = 1,
        batching: float = 0.0,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        prior_s: float | None = None,
    ) -> None:
        """One answer: ``seconds`` of service with ``concurrency`` requests running on a worker whose
        requests slow down by ``batching`` per neighbour; token counts from the answer's ``usage``.

        ``prior_s`` (what was expected of it) counts as one earlier answer when this is the first: one
        answer's noise alone would decide a whole burst's split. The first answers are averaged, then
        the average moves by ``EWMA_WEIGHT``.
        """
        if seconds <= 0:
            return
        alone = seconds / slowdown(concurrency, batching)
        workers = self.by_model.setdefault(model, {})
        stats = workers.get(worker_id)
        if stats is None:
            if prior_s is None or prior_s <= 0:
                stats = workers[worker_id] = ModelStats(alone)
            else:
                stats = workers[worker_id] = ModelStats(prior_s, samples=1)
                stats.fed(alone)
        else:
            stats.fed(alone)
        if completion_tokens is not None:
            previous = stats.completion_tokens
            stats.completion_tokens = (
                float(completion_tokens)
                if previous is None
                else previous + EWMA_WEIGHT * (completion_tokens - previous)
            )
            stats.fit.add(alone, float(prompt_tokens or 0), float(completion_tokens))

    def alone_s(
        self,
        worker_id: str,
        model: str,
        speed: float,
        speed_of: Callable[[str], float | None],
        *,
        prompt_tokens: float,
        max_tokens: int | None,
        catalog_s: float,
    ) -> float:
        """One request's expected time alone on ``worker_id``: what it measured for this model; else the
        model's time on the others scaled by speed (theirs over this one's); else the catalog's guess for
        the reference GPU over this one's speed."""
        workers = self.by_model.get(model)
        if not workers:
            return catalog_s / speed
        own = workers.get(worker_id)
        if own is not None and own.samples >= SETTLED_SAMPLES:
            return own.predict(prompt_tokens, max_tokens)
        scaled = [
            stats.predict(prompt_tokens, max_tokens) * other / speed
            for other_id, stats in workers.items()
            if other_id != worker_id and (other := speed_of(other_id)) is not None
        ]
        prior = sum(scaled) / len(scaled) if scaled else catalog_s / speed
        if own is None:
            return prior
        # A few answers of its own are noisy: the others' figure counts as PRIOR_WEIGHT answers beside them.
        return (own.samples * own.predict(prompt_tokens, max_tokens) + PRIOR_WEIGHT * prior) / (
            own.samples + PRIOR_WEIGHT
        )

    def measured(self, worker_id: str, model: str) -> bool:
        return worker_id in self.by_model.get(model, {})

    def forget(self, worker_id: str) -> None:
        for workers in self.by_model.values():
            workers.pop(worker_id, None)
