"""The one name rule: what may reach a subject, a file name or a command argument."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from shared.names import InvalidName, Name, check_name, is_valid_name


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("ai-llm", True),
        ("gpu.lan", True),
        ("worker_0", True),
        ("A" * 128, True),
        ("A" * 129, False),
        ("ai*star", False),
        ("-leading-dash", False),
        (".hidden", False),
        ("../etc", False),
        ("two words", False),
        ("semi;colon", False),
        ("gt>", False),
        ("", False),
        ("ünïcode", False),
        ("new\nline", False),
    ],
)
def test_the_rule(name: str, valid: bool) -> None:
    assert is_valid_name(name) is valid


def test_check_names_what_and_where() -> None:
    with pytest.raises(InvalidName) as caught:
        check_name("ai*star", "service", field="assignments.0.service")
    assert "service 'ai*star' is not a valid name" in str(caught.value)
    assert caught.value.field == "assignments.0.service" and caught.value.reply_code == "bad_request"
    assert check_name("ai-llm") == "ai-llm"


def test_a_name_field_refuses_a_bad_name_at_the_field() -> None:
    class Body(BaseModel):
        service: Name

    with pytest.raises(ValidationError) as caught:
        Body(service="ai*star")
    assert caught.value.errors()[0]["loc"] == ("service",)
