"""Lost answers: which outstanding requests to ask about, and when one nobody holds is lost. Time is passed in."""

from __future__ import annotations

from shared.answers import AnswerWatch


def test_only_requests_out_long_enough_are_asked_about_oldest_first() -> None:
    watch = AnswerWatch(check_after_s=5.0, grace_s=2.0)
    assert watch.due({"new": 9.0, "old": 1.0, "middle": 3.0}, now=10.0) == ["old", "middle"]


def test_one_nobody_holds_is_lost_only_after_the_grace() -> None:
    watch = AnswerWatch(check_after_s=0.0, grace_s=2.0)
    watch.heard(["a", "b"], held=["b"], now=10.0)
    assert watch.lost({"a", "b"}, now=11.0) == []  # its answer may only be late
    assert watch.lost({"a", "b"}, now=12.0) == ["a"]
    assert watch.lost({"a", "b"}, now=20.0) == []  # reported once


def test_an_answer_that_arrives_within_the_grace_clears_the_suspicion() -> None:
    watch = AnswerWatch(check_after_s=0.0, grace_s=2.0)
    watch.heard(["a"], held=[], now=10.0)
    assert watch.lost(set(), now=13.0) == []  # answered meanwhile: no longer outstanding
    watch.heard(["a"], held=[], now=20.0)
    assert watch.lost({"a"}, now=21.0) == []  # a new suspicion starts a new grace


def test_a_holder_claiming_it_later_clears_it_and_forget_drops_it() -> None:
    watch = AnswerWatch(check_after_s=0.0, grace_s=1.0)
    watch.heard(["a", "b"], held=[], now=0.0)
    watch.heard(["a"], held=["a"], now=0.5)
    watch.forget("b")
    assert watch.lost({"a", "b"}, now=5.0) == []
