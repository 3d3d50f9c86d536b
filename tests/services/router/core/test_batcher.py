"""Dynamic batching of embedding requests per model, by size and by time window."""

from __future__ import annotations

import pytest

from services.router.core.batcher import Batcher


def test_defaults() -> None:
    b: Batcher[str] = Batcher()
    assert (b.max_size, b.window_s) == (4, 0.1)
    assert b.next_due_at() is None


def test_fills_at_max_size() -> None:
    b: Batcher[str] = Batcher(max_size=3, window_s=1.0)
    assert b.add("m", "a", 0.0) is None
    assert b.add("m", "b", 0.2) is None
    full = b.add("m", "c", 0.4)
    assert full is not None
    assert (full.model, full.opened_at, full.items) == ("m", 0.0, ["a", "b", "c"])
    assert b.next_due_at() is None
    assert b.add("m", "d", 0.5) is None  # a new batch
    assert b.next_due_at() == pytest.approx(1.5)


def test_max_size_one_returns_at_once() -> None:
    b: Batcher[str] = Batcher(max_size=1, window_s=1.0)
    batch = b.add("m", "a", 3.0)
    assert batch is not None and batch.items == ["a"]
    assert b.flush() == []


@pytest.mark.parametrize(
    ("now", "due"),
    [
        pytest.param(0.0, False, id="at-open"),
        pytest.param(0.099, False, id="inside-window"),
        pytest.param(0.1, True, id="window-end"),
        pytest.param(5.0, True, id="long-after"),
    ],
)
def test_due_after_window(now: float, due: bool) -> None:
    b: Batcher[str] = Batcher(max_size=4, window_s=0.1)
    b.add("m", "a", 0.0)
    ready = b.due(now)
    assert [batch.items for batch in ready] == ([["a"]] if due else [])
    assert (b.next_due_at() is None) is due


def test_due_removes_batches() -> None:
    b: Batcher[str] = Batcher(max_size=4, window_s=0.1)
    b.add("m", "a", 0.0)
    assert len(b.due(1.0)) == 1
    assert b.due(2.0) == []


def test_window_counts_from_first_item() -> None:
    b: Batcher[str] = Batcher(max_size=4, window_s=1.0)
    b.add("m", "a", 0.0)
    b.add("m", "b", 0.9)
    ready = b.due(1.0)
    assert [batch.items for batch in ready] == [["a", "b"]]


def test_models_batch_separately() -> None:
    b: Batcher[str] = Batcher(max_size=2, window_s=1.0)
    assert b.add("x", "x1", 0.0) is None
    assert b.add("y", "y1", 0.5) is None
    full = b.add("x", "x2", 0.6)
    assert full is not None and (full.model, full.items) == ("x", ["x1", "x2"])
    assert b.next_due_at() == pytest.approx(1.5)
    ready = b.due(1.5)
    assert [(batch.model, batch.items) for batch in ready] == [("y", ["y1"])]


def test_due_returns_only_ripe_models() -> None:
    b: Batcher[str] = Batcher(max_size=4, window_s=1.0)
    b.add("x", "x1", 0.0)
    b.add("y", "y1", 0.5)
    assert b.next_due_at() == pytest.approx(1.0)
    assert [batch.model for batch in b.due(1.2)] == ["x"]
    assert b.next_due_at() == pytest.approx(1.5)
    assert [batch.model for batch in b.due(1.5)] == ["y"]
    assert b.next_due_at() is None


def test_flush_returns_everything_and_empties() -> None:
    b: Batcher[str] = Batcher(max_size=4, window_s=1.0)
    b.add("x", "x1", 0.0)
    b.add("y", "y1", 0.1)
    b.add("x", "x2", 0.2)
    flushed = b.flush()
    assert sorted((batch.model, tuple(batch.items)) for batch in flushed) == [("x", ("x1", "x2")), ("y", ("y1",))]
    assert b.flush() == []
    assert b.next_due_at() is None
    assert b.due(100.0) == []
