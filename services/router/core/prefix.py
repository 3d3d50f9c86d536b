"""Prompt prefixes: the keys of a request's prompt, and which worker was last sent each one.

An engine keeps the prompt it just served in its KV (vLLM's prefix cache) or slot cache (llama.cpp), so
the next request that starts the same way (the same system prompt; the next turn of a conversation,
whose messages are the previous turn's plus the answer) skips that prefill there. The keys are hashes
of the prompt's first N characters, at each message boundary and every ``BLOCK_CHARS``, only from
``MIN_PREFIX_CHARS`` on (a shorter shared start saves too little to be worth a detour).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from shared.contracts import InferenceKind

MIN_PREFIX_CHARS = 1000
"""About 250 tokens: a shorter common start is prefilled in milliseconds anywhere."""
BLOCK_CHARS = 1024
"""A key every this many characters too, so that one long message shared by two prompts counts."""
MAX_KEYS = 32
"""Keys kept per request (the shortest, the longest, and evenly between): bounds the table's churn."""
TABLE_ENTRIES = 50_000
"""Keys remembered in all; each costs about 400 bytes with one holder and 95 more per other holder
(tracemalloc, 64-bit CPython 3.11): 20 MB with one holder each, 55 MB at most."""
HOLDERS_PER_KEY = 8
"""Workers remembered per key (the most recently sent)."""
TTL_S = 300.0
"""A key is forgotten this long after its last request: engines evict what is not reused."""

PrefixKey = tuple[int, int]
"""(hash of the prompt's first ``chars`` characters, ``chars``)."""


@dataclass(frozen=True)
class Shape:
    """What the body says about a request's size, and its prefix keys (longest first)."""

    prompt_chars: int = 0
    max_tokens: int | None = None
    prefix: tuple[PrefixKey, ...] = ()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [p.get("text") if isinstance(p, dict) and isinstance(p.get("text"), str) else p for p in value]
        return "".join(p if isinstance(p, str) else json.dumps(p, sort_keys=True) for p in parts)
    return "" if value is None else json.dumps(value, sort_keys=True)


def _pieces(body: Mapping[str, Any], kind: InferenceKind) -> list[str]:
    """The prompt as it reaches the engine, one piece per message (a message boundary ends each)."""
    if kind is InferenceKind.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return []
        pieces = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            extra = _text(m["tool_calls"]) if m.get("tool_calls") else ""
            pieces.append(f"{m.get('role', '')}\x1f{_text(m.get('content'))}{extra}\x1e")
        return pieces
    prompt = body.get("prompt") if kind is InferenceKind.COMPLETION else body.get("input")
    return [_text(prompt)]


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _thin(keys: list[PrefixKey]) -> list[PrefixKey]:
    if len(keys) <= MAX_KEYS:
        return keys
    step = (len(keys) - 1) / (MAX_KEYS - 1)
    return [keys[round(i * step)] for i in range(MAX_KEYS)]


def request_shape(body: Mapping[str, Any], kind: InferenceKind, model: str, *, prefix: bool) -> Shape:
    """The prompt's size, ``max_tokens``, and (``prefix`` and chat or completion only) its prefix keys.

    The hash runs over the model's id and the prompt, cut at each message end and every ``BLOCK_CHARS``;
    two prompts share a key exactly when their first ``chars`` characters (and model) are equal.
    """
    pieces = _pieces(body, kind)
    total = sum(len(p) for p in pieces)
    if not prefix or kind is InferenceKind.EMBEDDING or total < MIN_PREFIX_CHARS:
        return Shape(total, _max_tokens(body))
    digest = blake2b(model.encode(), digest_size=8)
    keys: list[PrefixKey] = []
    done = 0
    next_cut = BLOCK_CHARS
    for piece in pieces:
        at = 0
        while at < len(piece):
            take = min(len(piece) - at, next_cut - done)
            digest.update(piece[at : at + take].encode())
            at += take
            done += take
            if done == next_cut:
                next_cut += BLOCK_CHARS
                if done >= MIN_PREFIX_CHARS and at < len(piece):
                    keys.append((int.from_bytes(digest.copy().digest()), done))
        if done >= MIN_PREFIX_CHARS:
            keys.append((int.from_bytes(digest.copy().digest()), done))
    return Shape(total, _max_tokens(body), tuple(reversed(_thin(keys))))


class PrefixTable:
    """Key -> the workers recently sent a request with that prefix (at most ``HOLDERS_PER_KEY``), least
    recently sent key dropped first.

    Several holders per key: a prefix every request shares (one system prompt) is soon cached on every
    engine, and then says nothing about where to go; a longer one (a conversation's turns) says which
    engine has more. At most ``max_entries`` keys; a holder older than ``ttl_s`` is not trusted.
    """

    def __init__(self, max_entries: int = TABLE_ENTRIES, ttl_s: float = TTL_S) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[int, dict[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, keys: Iterable[PrefixKey], worker_id: str, now: float) -> None:
        entries = self._entries
        for key, _ in keys:
            holders = entries.get(key)
            if holders is None:
                holders = entries[key] = {}
            holders.pop(worker_id, None)
            holders[worker_id] = now
            if len(holders) > HOLDERS_PER_KEY:
                del holders[next(iter(holders))]
            entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def lookup(self, keys: Iterable[PrefixKey], now: float) -> dict[str, int]:
        """Worker -> how many of the prompt's first characters it likely holds (its longest key of ``keys``,
        which come longest first); workers holding none are left out."""
        found: dict[str, int] = {}
        for key, chars in keys:
            holders = self._entries.get(key)
            if holders is None:
                continue
            for worker_id, at in list(holders.items()):
                if now - at > self.ttl_s:
                    del holders[worker_id]
                elif worker_id not in found:
                    found[worker_id] = chars
            if not holders:
                del self._entries[key]
        return found

    def forget(self, worker_id: str) -> None:
        """The worker left or restarted: its cache is gone."""
        for key in list(self._entries):
            holders = self._entries[key]
            holders.pop(worker_id, None)
            if not holders:
                del self._entries[key]
