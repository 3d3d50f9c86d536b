"""Prefix keys of a prompt, the bounded table of who was sent them, and the prefix-affinity decision."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from services.router.core.model import PlacementRequest
from services.router.core.policies import make_policy
from services.router.core.prefix import HOLDERS_PER_KEY, MAX_KEYS, MIN_PREFIX_CHARS, PrefixTable, request_shape
from shared.contracts import InferenceKind, Route
from tests.builders import make_placement_request, make_snapshot, make_worker_status
from tests.services.router.core.helpers import pools_of, rng

SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 60}  # about 1700 characters


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages), **extra}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def keys(body: dict[str, Any], kind: InferenceKind = InferenceKind.CHAT, model: str = "m") -> set[int]:
    return {k for k, _ in request_shape(body, kind, model, prefix=True).prefix}


TURN1 = chat(SYSTEM, user("What is a GPU?"))
TURN2 = chat(SYSTEM, user("What is a GPU?"), {"role": "assistant", "content": "A processor."}, user("And a TPU?"))


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        pytest.param(chat(SYSTEM, user("a")), chat(SYSTEM, user("b")), True, id="same-system-prompt"),
        pytest.param(TURN1, TURN2, True, id="next-turn-of-a-conversation"),
        pytest.param(chat(user("x" * 5000)), chat(user("x" * 5000 + "?")), True, id="one-long-message-blocks"),
        pytest.param(chat(user("short")), chat(user("short")), False, id="too-short-to-matter"),
        pytest.param(chat(SYSTEM, user("a")), chat({"role": "system", "content": "Other. " * 300}), False,
                     id="different-system-prompt"),
    ],
)
def test_prompts_share_keys_exactly_when_they_share_a_long_prefix(first: dict[str, Any], second: dict[str, Any],
                                                                  shared: bool) -> None:
    assert bool(keys(first) & keys(second)) is shared


def test_the_previous_turns_whole_prompt_is_a_key_of_the_next() -> None:
    longest_of_turn1 = request_shape(TURN1, InferenceKind.CHAT, "m", prefix=True).prefix[0]
    assert longest_of_turn1 in request_shape(TURN2, InferenceKind.CHAT, "m", prefix=True).prefix


@pytest.mark.parametrize(
    ("body", "kind", "model", "prefix", "count"),
    [
        pytest.param({"input": "x" * 5000}, InferenceKind.EMBEDDING, "m", True, 0, id="not-for-embeddings"),
        pytest.param(TURN1, InferenceKind.CHAT, "m", False, 0, id="setting-off"),
        pytest.param({"prompt": "y" * 3000}, InferenceKind.COMPLETION, "m", True, 3, id="completion-blocks"),
        pytest.param(chat(user("z" * 200_000)), InferenceKind.CHAT, "m", True, MAX_KEYS, id="bounded-per-request"),
    ],
)
def test_key_counts(body: dict[str, Any], kind: InferenceKind, model: str, prefix: bool, count: int) -> None:
    assert len(request_shape(body, kind, model, prefix=prefix).prefix) == count


def test_keys_depend_on_the_model_and_run_longest_first() -> None:
    shape = request_shape(TURN2, InferenceKind.CHAT, "m", prefix=True)
    assert [c for _, c in shape.prefix] == sorted((c for _, c in shape.prefix), reverse=True)
    assert all(c >= MIN_PREFIX_CHARS for _, c in shape.prefix)
    assert not keys(TURN2, model="m") & keys(TURN2, model="other")


def test_shape_reads_size_and_max_tokens() -> None:
    shape = request_shape(chat(user("abcd"), max_tokens=64), InferenceKind.CHAT, "m", prefix=True)
    assert (shape.max_tokens, shape.prefix) == (64, ())
    assert shape.prompt_chars > 4


# --------------------------------------------------------------------------- the table


def test_table_keeps_at_most_max_entries_least_recently_sent_dropped() -> None:
    table = PrefixTable(max_entries=3, ttl_s=100.0)
    for key in (1, 2, 3):
        table.remember([(key, 1000)], "w0", 0.0)
    table.remember([(1, 1000)], "w1", 1.0)  # 1 refreshed: 2 is now the oldest
    table.remember([(4, 1000)], "w0", 2.0)
    assert len(table) == 3
    assert table.lookup([(2, 1000)], 2.0) == {}
    assert table.lookup([(1, 1000)], 2.0) == {"w0": 1000, "w1": 1000}


@pytest.mark.parametrize(("now", "found"), [(50.0, {"w0": 2000}), (101.0, {})])
def test_table_entries_expire(now: float, found: dict[str, int]) -> None:
    table = PrefixTable(ttl_s=100.0)
    table.remember([(7, 2000), (8, 1000)], "w0", 0.0)
    assert table.lookup([(7, 2000), (8, 1000)], now) == found


def test_table_longest_match_wins_and_a_worker_that_left_is_forgotten() -> None:
    table = PrefixTable()
    table.remember([(8, 1000)], "w0", 0.0)
    table.remember([(9, 3000), (8, 1000)], "w1", 1.0)
    assert table.lookup([(9, 3000), (8, 1000)], 1.0) == {"w1": 3000, "w0": 1000}
    table.forget("w1")
    assert table.lookup([(9, 3000), (8, 1000)], 1.0) == {"w0": 1000}
    table.forget("w0")
    assert len(table) == 0


def test_a_key_keeps_its_most_recent_holders_only() -> None:
    table = PrefixTable()
    for i in range(HOLDERS_PER_KEY + 2):
        table.remember([(3, 1000)], f"w{i}", float(i))
    assert set(table.lookup([(3, 1000)], 20.0)) == {f"w{i}" for i in range(2, HOLDERS_PER_KEY + 2)}


# --------------------------------------------------------------------------- the decision

REQ = dataclasses.replace(make_placement_request(group="g", expected_latency_s=1.0), prefix=((5, 3000),))


@pytest.mark.parametrize(
    ("cached_load", "other_load", "winner", "route"),
    [
        pytest.param(0, 0, "cached", Route.AFFINITY, id="goes-to-the-holder-of-the-prefix"),
        pytest.param(2, 0, "other", Route.AFFINITY, id="gives-way-when-much-busier"),
        pytest.param(1, 1, "cached", Route.AFFINITY, id="as-busy-as-the-pick-is-fine"),
    ],
)
def test_prefix_affinity_decision(cached_load: int, other_load: int, winner: str, route: Route) -> None:
    cached = dataclasses.replace(make_snapshot("cached", groups=("g",), load=cached_load), prefix_chars=3000)
    other = make_snapshot("other", groups=("g",), load=other_load)
    choice = make_policy("affinity").choose(REQ, [cached, other], rng())
    assert choice is not None and (choice.worker_id, choice.route) == (winner, route)
    assert "3000 characters" in choice.reason


def test_a_prefix_every_worker_holds_says_nothing() -> None:
    """One system prompt for everyone: cached on both, so the usual pick stands (here the idle one)."""
    busy = dataclasses.replace(make_snapshot("busy", groups=("g",), load=1, slots=2), prefix_chars=3000)
    idle = dataclasses.replace(make_snapshot("idle", groups=("g",), load=0, slots=2), prefix_chars=3000)
    choice = make_policy("affinity").choose(REQ, [busy, idle], rng())
    assert choice is not None and choice.worker_id == "idle"
    assert "has this prompt's first 3000 characters cached" in choice.reason


def test_never_a_detour_to_a_busier_engine() -> None:
    """Two slots each, estimates saying a neighbour costs little: still no detour to the one already running."""
    holder = dataclasses.replace(make_snapshot("holder", groups=("g",), load=1, slots=2), prefix_chars=3000)
    idle = make_snapshot("idle", groups=("g",), load=0, slots=2)
    choice = make_policy("affinity").choose(REQ, [holder, idle], rng())
    assert choice is not None and choice.worker_id == "idle"
    assert "prefix affinity gave way" in choice.reason


def test_a_small_difference_in_what_is_cached_is_not_worth_a_detour() -> None:
    picked = dataclasses.replace(make_snapshot("picked", groups=("g",)), prefix_chars=2000)
    holder = dataclasses.replace(make_snapshot("holder", groups=("g",), load=1, slots=2), prefix_chars=2500)
    choice = make_policy("affinity").choose(REQ, [picked, holder], rng())
    assert choice is not None and choice.worker_id == "picked"


def _placed(prefix_affinity: bool, body: dict[str, Any], kind: InferenceKind = InferenceKind.CHAT) -> list[str]:
    """Where three requests with ``body`` go among two equal idle workers, each answered before the next."""
    pools = pools_of(*(make_worker_status(w, device=f"cuda:{i}", groups=("g",)) for i, w in enumerate(("a", "b"))),
                     prefix_affinity=prefix_affinity)
    shape = request_shape(body, kind, "model-a", prefix=prefix_affinity)
    policy = make_policy("affinity")
    where = []
    for i in range(3):
        request: PlacementRequest = dataclasses.replace(
            make_placement_request(request_id=f"r{i}", group="g", kind=kind), prefix=shape.prefix)
        decision = pools.place(request, float(i), policy, random.Random(i))
        where.append(decision.worker_id)  # type: ignore[union-attr]
        pools.on_sent(decision.worker_id, float(i), request=request)  # type: ignore[union-attr]
        pools.on_done(decision.worker_id, float(i) + 0.5, ok=True, request_id=request.request_id)  # type: ignore[union-attr]
    return where


@pytest.mark.parametrize(("prefix_affinity", "engines"), [(True, 1), (False, 2)])
def test_pools_send_a_conversation_back_to_its_engine(prefix_affinity: bool, engines: int) -> None:
    # Without it, equal idle workers share by the seeded tie-break (these seeds use both).
    assert len(set(_placed(prefix_affinity, TURN2))) == engines


def test_off_when_the_setting_is_off() -> None:
    pools = pools_of(make_worker_status(), prefix_affinity=False)
    request = dataclasses.replace(make_placement_request(), prefix=((5, 3000),))
    pools.on_sent("w0", 0.0, request=request)
    assert len(pools.prefixes) == 0


def test_not_for_embeddings() -> None:
    assert request_shape({"input": SYSTEM["content"]}, InferenceKind.EMBEDDING, "e", prefix=True).prefix == ()
