"""The one error table: each typed error's row, and what each row answers over HTTP."""

from __future__ import annotations

from typing import get_args

import pytest

from shared.errors import (
    ERRORS,
    BusError,
    BusUnavailable,
    ConfigError,
    Conflict,
    ContractError,
    ErrorCode,
    Forbidden,
    GpuplaneError,
    InvalidRequest,
    NoResponders,
    NotFound,
    OperationFailed,
    Overloaded,
    RemoteError,
    ReplyCode,
    RequestTimeout,
    error_code,
    openai_type,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest("bad"), "bad_request"),
        (Forbidden("no"), "forbidden"),
        (NotFound("none"), "not_found"),
        (Conflict("busy"), "conflict"),
        (Overloaded("full", retry_after_s=1), "overloaded"),
        (OperationFailed("broke"), "internal"),
        (GpuplaneError("down"), "unavailable"),
        (ConfigError("unset"), "unavailable"),
        (NoResponders("s"), "no_responder"),
        (RequestTimeout("s", 1), "timeout"),
        (BusUnavailable("away"), "unavailable"),
        (BusError("garbled"), "bad_gateway"),
        # A bus failure is the asker's, whatever a handler raising it would reply.
        (ContractError("not the contract"), "bad_gateway"),
        (RemoteError("s", "not_found", "none"), "not_found"),
        (RemoteError("s", "overloaded", "full"), "overloaded"),
        (RemoteError("s", "a_code_from_a_newer_service", "?"), "bad_gateway"),
    ],
)
def test_each_error_has_its_row(error: GpuplaneError, code: ErrorCode) -> None:
    assert error_code(error) == code


@pytest.mark.parametrize(
    ("code", "status", "openai_status", "openai_type_", "openai_code", "retry"),
    [
        ("bad_request", 422, 400, "invalid_request_error", None, False),
        ("forbidden", 403, 403, "permission_error", "forbidden", False),
        ("not_found", 404, 404, "not_found_error", None, False),
        ("conflict", 409, 409, "invalid_request_error", "conflict", False),
        ("overloaded", 429, 429, "rate_limit_error", "overloaded", True),
        ("unavailable", 503, 503, "server_error", "unavailable", True),
        ("internal", 500, 500, "server_error", "internal", False),
        ("no_responder", 503, 503, "server_error", "no_router", True),
        ("timeout", 504, 504, "server_error", "timeout", True),
        ("bad_gateway", 502, 502, "server_error", "bad_gateway", False),
    ],
)
def test_the_table(
    code: ErrorCode, status: int, openai_status: int, openai_type_: str, openai_code: str | None, retry: bool
) -> None:
    row = ERRORS[code]
    assert (row.status, row.openai_status, row.openai_type, row.openai_code, row.retry_after) == (
        status,
        openai_status,
        openai_type_,
        openai_code,
        retry,
    )


def test_every_code_has_a_row() -> None:
    reply_codes = set(get_args(ReplyCode))
    codes = {c for arg in get_args(ErrorCode) for c in get_args(arg)}
    assert reply_codes < codes and set(ERRORS) == codes


@pytest.mark.parametrize(
    ("status", "type_"),
    [
        (400, "invalid_request_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (501, "server_error"),
    ],
)
def test_a_status_no_code_produced_gets_openais_type_for_it(status: int, type_: str) -> None:
    assert openai_type(status) == type_
