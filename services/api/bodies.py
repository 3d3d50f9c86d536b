"""Reading a JSON body so that nothing a client sends can turn into a server error.

Python's ``json`` accepts what JSON does not (``NaN``, ``Infinity``), turns ``1e400`` into infinity,
and keeps lone UTF-16 surrogates (``"\\ud800"``) that no encoder can write back; integers may be as
long as the body. Each of these became a 500 (or a database error) further in. Here they are a
``BodyProblem`` that names where in the body it is, answered 422 (400 under /v1).

``model_problem`` words a pydantic model's refusal of a body the same way (the /v1 bodies).
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
"""What PostgreSQL's bigint holds; no field of gpuplane's needs more."""


class BodyProblem(Exception):
    """What is wrong with a body and where (``loc`` as FastAPI writes it, without the leading "body")."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.loc)
        return f"{where}: {self.message}" if where else self.message

    @property
    def field(self) -> str | None:
        return ".".join(str(p) for p in self.loc) or None


class _NonFinite:
    def __init__(self, text: str) -> None:
        self.text = text


def _constant(text: str) -> _NonFinite:
    return _NonFinite(text)


def _float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or ``BodyProblem`` naming the first thing in it that cannot be served."""
    try:
        value = json.loads(raw, parse_constant=_constant, parse_float=_float)
    except UnicodeDecodeError as exc:
        raise BodyProblem((), f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise BodyProblem((), "the body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int() past sys.get_int_max_str_digits()
        raise BodyProblem((), f"the body is not valid JSON: {exc}") from None
    check(value, ())
    return value


def check(value: Any, loc: tuple[str | int, ...]) -> None:
    """Walk a parsed body; raise ``BodyProblem`` at the first value no field could take."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, loc)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, bool) or item is None or isinstance(item, float):
            continue
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                raise BodyProblem(where, f"the integer {str(item)[:24]}... is out of range")
        elif isinstance(item, _NonFinite):
            raise BodyProblem(where, f"{item.text} is not a number JSON allows (finite numbers only)")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, where)
                stack.append((child, (*where, key)))
        elif isinstance(item, list):
            stack.extend((child, (*where, i)) for i, child in enumerate(item))


def _check_text(text: str, where: tuple[str | int, ...]) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BodyProblem(where, f"invalid Unicode: a lone surrogate at character {exc.start}") from None


# --------------------------------------------------------------------------- a body that fails its model

_OBJECT_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type"})
"""Pydantic says "dictionary or instance of <class>"; a JSON client knows an object."""


def model_problem(exc: ValidationError, body: Any, model: type[BaseModel]) -> BodyProblem:
    """The first thing wrong in ``body`` by ``model``, as one ``BodyProblem``: its path in the body, pydantic's
    complaint, and the field's description (which says what the field allows).

    Pydantic reports a value that matches no branch of a union once per branch, under the branch's name
    ("stop.list[str].1"). The branch that came closest is the one meant: the one that failed deepest into the
    value, with the fewest complaints (``["a", 5]`` as a string or a list of strings is wrong at ``.1``). A value
    that no branch could even start on is "not allowed", and the description lists what is.
    """
    errors = exc.errors(include_url=False)
    path, tag = _walk(errors[0], body)
    error = errors[0]
    if tag is not None:
        union = errors[0]["loc"][:tag]
        branches: dict[str | int, list[tuple[tuple[str | int, ...], ErrorDetails]]] = {}
        for e in errors:
            if e["loc"][:tag] == union and len(e["loc"]) > tag:
                branches.setdefault(e["loc"][tag], []).append((_walk(e, body)[0], e))
        nearest = max(branches.values(), key=lambda b: (max(len(p) for p, _ in b), -len(b)))
        deepest = max(len(p) for p, _ in nearest)
        path, error = next((p, e) for p, e in nearest if len(p) == deepest)
    where = ".".join(str(p) for p in path)
    if tag is not None and len(path) == tag:  # no branch got into the value
        message = f"{where}: {_short(error.get('input'))} is not allowed"
    else:
        message = f"{where}: {_message(error)}"
    doc = _description(model, path)
    return BodyProblem(path, f"{message}. {doc}" if doc else message)


def _walk(error: ErrorDetails, body: Any) -> tuple[tuple[str | int, ...], int | None]:
    """``error``'s place in ``body`` (its ``loc`` less the names of union branches, which are no keys of the
    body), and where in ``loc`` the first such name is (None: no union on the way)."""
    loc = error["loc"]
    path: list[str | int] = []
    tag: int | None = None
    here = body
    for i, part in enumerate(loc):
        if isinstance(here, dict) and part in here:
            path.append(part)
            here = here[part]
        elif isinstance(here, list) and isinstance(part, int) and 0 <= part < len(here):
            path.append(part)
            here = here[part]
        elif error["type"] == "missing" and i == len(loc) - 1:
            path.append(part)
        elif tag is None:
            tag = i
    return tuple(path), tag


def _message(error: ErrorDetails) -> str:
    return "Input should be an object" if error["type"] in _OBJECT_ERRORS else error["msg"]


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _description(model: type[BaseModel], path: Sequence[str | int]) -> str | None:
    """The description of the innermost field of ``model`` on ``path`` (a list's item has its list's)."""
    found: str | None = None
    current: type[BaseModel] | None = model
    for part in path:
        if current is None or not isinstance(part, str):
            continue
        info = current.model_fields.get(part)
        if info is None:
            return found
        found = info.description
        current = _model_in(info.annotation)
    return found


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, also inside a list or an optional (``list[ChatMessageIn] | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (inner := _model_in(arg)) is not None:
            return inner
    return None
