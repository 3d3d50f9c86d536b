"""The one name rule: every name that can reach a NATS subject, a file name or a command argument.

Services, hosts, workers, model groups and compose projects are all checked here when they are
loaded (catalog, compose file, fleet, settings) or received (requests, messages), so a name like
``ai*star`` or ``../x`` stops at the door with the file or field named, and never reaches the
orchestrator's compose command, a subject or a path.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from shared.errors import InvalidRequest

NAME_MAX_LENGTH = 128
NAME_RULE = "a letter or digit, then letters, digits, '.', '_' or '-' (at most 128 characters)"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class InvalidName(InvalidRequest):
    """A name that breaks the rule; ``field`` says where it was found."""


def is_valid_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= NAME_MAX_LENGTH and _NAME.match(value) is not None


def check_name(value: str, what: str = "name", *, field: str | None = None) -> str:
    """Return ``value`` if it follows the rule, else raise ``InvalidName`` naming ``what``."""
    if not is_valid_name(value):
        raise InvalidName(f"{what} {value!r} is not a valid name: use {NAME_RULE}", field=field)
    return value


def _pydantic_check(value: str) -> str:
    if not is_valid_name(value):
        # pydantic turns a ValueError into a validation error located at the field.
        raise ValueError(f"{value!r} is not a valid name: use {NAME_RULE}")
    return value


Name = Annotated[str, AfterValidator(_pydantic_check)]
"""A ``str`` field that must follow the name rule (pydantic models: contracts, settings, files)."""
