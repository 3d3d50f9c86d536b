"""JSON bodies that no field could take are refused naming where, not turned into a server error later."""

from __future__ import annotations

import pytest

from services.api.bodies import BodyProblem, parse_json


@pytest.mark.parametrize(
    ("raw", "loc", "words"),
    [
        (b'{"budget": NaN}', ("budget",), "NaN"),
        (b'{"a": [1, Infinity]}', ("a", 1), "Infinity"),
        (b'{"a": -Infinity}', ("a",), "-Infinity"),
        (b'{"f": 1e400}', ("f",), "1e400"),
        (b'{"assignments": [{"gpu_index": 99999999999999999999999}]}', ("assignments", 0, "gpu_index"), "range"),
        (b'{"name": "\\ud800"}', ("name",), "surrogate"),
        (b'{"\\udfff": 1}', (), "surrogate"),
        (b'{"a": "\xff"}', (), "UTF-8"),
        (b"{", (), "not valid JSON"),
        (b"[" * 200_000, (), "nested too deeply"),
        (b"1" * 5000, (), "not valid JSON"),
    ],
)
def test_what_cannot_be_served_is_named(raw: bytes, loc: tuple[str | int, ...], words: str) -> None:
    with pytest.raises(BodyProblem) as caught:
        parse_json(raw)
    assert caught.value.loc == loc
    assert words in caught.value.message


@pytest.mark.parametrize(
    "raw",
    [b'{"a": 1.5, "b": [true, null, "text \\u00e9"], "c": 2147483648}', b"[]", b'"x"', b"-9223372036854775808"],
)
def test_ordinary_json_passes(raw: bytes) -> None:
    parse_json(raw)
