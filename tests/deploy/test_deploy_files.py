"""docker-compose.yml, the Containerfile and the Prometheus configs stay in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from services.api.settings import ApiSettings
from services.cli import build_parser
from services.detector.settings import DetectorSettings
from services.stack.settings import StackSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
GPUPLANE_SERVICES = ["detector", "planner", "orchestrator", "router", "api", "worker-gpu0"]
KNOWN_SETTINGS = {
    f"GPUPLANE_{name.upper()}"
    for cls in (ApiSettings, DetectorSettings, StackSettings)
    for name in cls.model_fields
}


@pytest.mark.parametrize("service", GPUPLANE_SERVICES)
def test_compose_commands_parse_with_the_real_cli(service: str) -> None:
    command = COMPOSE["services"][service]["command"]
    args = build_parser().parse_args(command)
    assert args.command == service.split("-")[0]


@pytest.mark.parametrize("service", GPUPLANE_SERVICES)
def test_compose_sets_only_settings_that_exist(service: str) -> None:
    env = COMPOSE["services"][service].get("environment", {})
    unknown = {k for k in env if k.startswith("GPUPLANE_")} - KNOWN_SETTINGS
    assert not unknown, f"{service} sets settings no code reads: {unknown}"


def test_prometheus_in_compose_scrapes_the_ports_compose_opens() -> None:
    ports = {
        f"{svc}:{cmd[cmd.index('--metrics-port') + 1]}"
        for svc in GPUPLANE_SERVICES
        if "--metrics-port" in (cmd := COMPOSE["services"][svc]["command"])
    }
    scrape = yaml.safe_load((REPO / "deploy/prometheus/compose.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert ports <= targets and "api:8080" in targets


def test_containerfile_copies_what_the_package_and_defaults_need() -> None:
    text = (REPO / "Containerfile").read_text()
    for needed in ("COPY shared", "COPY services", "COPY deploy", 'ENTRYPOINT ["gpuplane"]'):
        assert needed in text
    assert re.search(r"GPUPLANE_HTTP_HOST=0\.0\.0\.0", text)
    default_fleet = StackSettings.model_fields["default_fleet"].default
    assert (REPO / default_fleet).is_file()
