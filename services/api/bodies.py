"""Reading a JSON body so that nothing a client sends can turn into a server error.

Python's ``json`` accepts what JSON does not (``NaN``, ``Infinity``), turns ``1e400`` into infinity,
and keeps lone UTF-16 surrogates (``"\\ud800"``) that no encoder can write back; integers may be as
long as the body. Each of these became a 500 (or a database error) further in. Here they are a
``BodyProblem`` that names where in the body it is, answered 422 (400 under /v1).
"""

from __future__ import annotations

import json
import math
from typing import Any

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
