"""bench/engines' workload: the same seed gives the same conversations, of the shape the benchmark promises."""

from __future__ import annotations

import math

import pytest

from bench.engines.workload import (
    RULES,
    arrivals,
    conversation_rate,
    conversation_turns,
    make_workload,
    messages,
    system_prompt,
    think_time,
)


def test_the_same_seed_gives_the_same_workload() -> None:
    assert make_workload(7, 0.3, 60) == make_workload(7, 0.3, 60)


def test_another_seed_gives_another_workload() -> None:
    one, two = make_workload(1, 0.3, 60), make_workload(2, 0.3, 60)
    assert one.system != two.system
    assert [c.turns for c in one.conversations] != [c.turns for c in two.conversations]


def test_a_conversation_does_not_depend_on_the_rate() -> None:
    slow, fast = make_workload(3, 0.1, 100), make_workload(3, 0.5, 100)
    assert len(fast.conversations) > len(slow.conversations)
    for mine, theirs in zip(slow.conversations, fast.conversations, strict=False):
        assert mine.turns == theirs.turns


def test_the_system_prompt_is_several_hundred_tokens_of_numbered_rules() -> None:
    text = system_prompt(0)
    words = len(text.split())
    # About 1.3 tokens a word: 420 words are some 550 tokens (the engine's tokenizer says 576).
    assert 400 <= words <= 500
    lines = text.splitlines()
    assert lines[1].startswith("1. ")
    rules = [line.split(". ", 1)[1] for line in lines[1:-1]]
    assert len(set(rules)) == len(rules), "no rule twice while the pool lasts"
    assert all(rule in RULES for rule in rules)


def test_the_system_prompt_grows_with_the_words_asked_for() -> None:
    assert len(system_prompt(0, 700).split()) >= 700 > len(system_prompt(0, 300).split())


@pytest.mark.parametrize("seed", range(5))
def test_conversations_have_three_to_six_short_distinct_turns(seed: int) -> None:
    for index in range(50):
        turns = conversation_turns(seed, index)
        assert 3 <= len(turns) <= 6
        assert turns[0].think_s == 0
        assert all(t.think_s > 0 for t in turns[1:])
        assert all(len(t.user.split()) <= 25 for t in turns)
        assert len({t.user for t in turns}) == len(turns)


def test_the_turn_counts_cover_the_range() -> None:
    counts = {len(conversation_turns(0, i)) for i in range(200)}
    assert counts == {3, 4, 5, 6}


def test_turn_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        conversation_turns(0, 0, min_turns=4, max_turns=3)
    assert len(conversation_turns(0, 0, min_turns=2, max_turns=2)) == 2


def test_think_times_stay_within_their_bounds() -> None:
    import random

    rng = random.Random(0)
    found = [think_time(rng, 2.0) for _ in range(2000)]
    assert min(found) >= 0.4 and max(found) <= 8.0
    assert 1.5 < sum(found) / len(found) < 2.5
    assert think_time(rng, 0) == 0


def test_arrivals_are_a_poisson_process_within_the_window() -> None:
    times = arrivals(0, 2.0, 500)
    assert times[0] == 0 and times == sorted(times) and times[-1] < 500
    assert 900 < len(times) < 1100
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert math.isclose(sum(gaps) / len(gaps), 0.5, rel_tol=0.1)
    with pytest.raises(ValueError):
        arrivals(0, 0, 10)


def test_workload_counts_its_requests() -> None:
    workload = make_workload(0, 0.2, 50)
    assert workload.requests == sum(len(c.turns) for c in workload.conversations)
    assert [c.index for c in workload.conversations] == list(range(len(workload.conversations)))
    assert all(c.start_s < 50 for c in workload.conversations)


def test_a_turn_carries_the_whole_history() -> None:
    chat = messages("SYS", [("q1", "a1"), ("q2", "a2")], "q3")
    assert chat == [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "q3"},
    ]
    assert messages("SYS", [], "q")[0]["role"] == "system"


def test_the_conversation_rate_makes_the_request_rate() -> None:
    assert conversation_rate(1.8, 3, 6) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        conversation_rate(0, 3, 6)
