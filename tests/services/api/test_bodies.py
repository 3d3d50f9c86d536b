"""JSON bodies that no field could take are refused naming where, not turned into a server error later."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.api.bodies import BodyProblem, model_problem, parse_json


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


class Part(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    kind: Literal["a", "b"] = Field(description="a or b.")


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    count: int = Field(ge=1, description="An integer of at least 1.")
    parts: list[Part] = Field(default_factory=list, description="A list of parts.")
    stop: str | list[str] | None = Field(default=None, description="A string or a list of strings.")
    ids: Annotated[str, Field(min_length=1)] | list[Annotated[list[int], Field(min_length=1)]] | None = None
    options: Part | None = None


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        ({}, ("count",), "count: Field required. An integer of at least 1."),
        ({"count": "2"}, ("count",), "count: Input should be a valid integer. An integer of at least 1."),
        ({"count": 0}, ("count",), "count: Input should be greater than or equal to 1. An integer of at least 1."),
        (
            {"count": 1, "parts": [{"kind": "a"}, {"kind": "c"}]},
            ("parts", 1, "kind"),
            "parts.1.kind: Input should be 'a' or 'b'. a or b.",
        ),
        ({"count": 1, "parts": [{}]}, ("parts", 0, "kind"), "parts.0.kind: Field required. a or b."),
        ({"count": 1, "parts": [7]}, ("parts", 0), "parts.0: Input should be an object. A list of parts."),
        ({"count": 1, "stop": 5}, ("stop",), "stop: 5 is not allowed. A string or a list of strings."),
        # The branch that got furthest into the value is the one meant.
        (
            {"count": 1, "stop": ["x", 5]},
            ("stop", 1),
            "stop.1: Input should be a valid string. A string or a list of strings.",
        ),
        ({"count": 1, "ids": [[1], []]}, ("ids", 1), "ids.1: List should have at least 1 item after validation, not 0"),
        ({"count": 1, "ids": [[1], ["x"]]}, ("ids", 1, 0), "ids.1.0: Input should be a valid integer"),
        ({"count": 1, "ids": ""}, ("ids",), 'ids: "" is not allowed'),
        ({"count": 1, "options": []}, ("options",), "options: Input should be an object"),
        ({"count": "x", "stop": 5}, ("count",), "count: Input should be a valid integer. An integer of at least 1."),
    ],
)
def test_a_model_refusal_names_the_place_in_the_body_and_what_is_allowed(
    body: dict[str, Any], loc: tuple[str | int, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Body.model_validate(body)

    problem = model_problem(caught.value, body, Body)

    assert (problem.loc, problem.message) == (loc, message)
    assert problem.field == ".".join(str(p) for p in loc)
