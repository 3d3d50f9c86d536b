"""The orchestrator's settings: the compose project name follows the name rule (``shared.names``)."""

from __future__ import annotations

import re

import pytest

from services.orchestrator.settings import OrchestratorSettings
from shared.errors import ConfigError


@pytest.mark.parametrize(
    ("given", "name"),
    [(None, None), ("", None), ("aistack", "aistack"), ("ai-stack_2.b", "ai-stack_2.b")],
)
def test_a_compose_project_within_the_rule_is_used_as_given(given: str | None, name: str | None) -> None:
    assert OrchestratorSettings(compose_project=given).compose_project_name() == name


@pytest.mark.parametrize("given", ["ai*star", "-p", "../x", "a b", "x" * 129])
def test_a_compose_project_against_the_rule_is_a_config_error_naming_the_setting(given: str) -> None:
    settings = OrchestratorSettings(compose_project=given)  # loads: the service starts and says why it cannot apply
    with pytest.raises(
        ConfigError, match="^" + re.escape(f"GPUPLANE_COMPOSE_PROJECT {given!r} is not a valid name: use ")
    ):
        settings.compose_project_name()
