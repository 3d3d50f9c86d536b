"""docker-compose.yml, the Containerfile and the Prometheus configs stay in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from services.api.settings import ApiSettings
from services.cli import build_parser
from services.detector.settings import DetectorSettings
from services.orchestrator.settings import OrchestratorSettings
from services.planner.settings import PlannerSettings
from services.stack.settings import StackSettings
from services.worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
GPUPLANE_SERVICES = ["detector", "planner", "orchestrator", "router", "api", "worker-gpu0"]
KNOWN_SETTINGS = {
    f"GPUPLANE_{name.upper()}"
    for cls in (ApiSettings, DetectorSettings, StackSettings, PlannerSettings, OrchestratorSettings, WorkerSettings)
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


def _variables(text: str) -> set[str]:
    """``${NAME}``, ``${NAME:-x}``, ``${NAME:?x}`` in a compose file; ``$NAME`` in a nats-server config."""
    return set(re.findall(r"\$\{([A-Z0-9_]+)", text)) | set(re.findall(r"password: \$([A-Z0-9_]+)", text))


def test_compose_publishes_the_api_only() -> None:
    published = {name: svc.get("ports", []) for name, svc in COMPOSE["services"].items() if svc.get("ports")}
    assert published.pop("api") == ["8080:8080"]
    # The monitoring profile's tools, on this machine's loopback only.
    assert all(port.startswith("127.0.0.1:") for ports in published.values() for port in ports)
    assert set(published) <= {"prometheus", "grafana"}


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, svc in COMPOSE["services"].items():
        if name in ("prometheus", "grafana") or svc.get("restart") == "no":
            continue
        assert "healthcheck" in svc, f"{name} has no healthcheck"


@pytest.mark.parametrize("service", [*GPUPLANE_SERVICES, "nats-init"])
def test_each_service_connects_to_nats_as_its_own_identity_with_a_secret_from_env(service: str) -> None:
    url = COMPOSE["services"][service]["environment"]["GPUPLANE_NATS_URL"]
    identity = {"worker-gpu0": "worker", "nats-init": "admin"}.get(service, service)
    assert url == f"nats://{identity}:${{GPUPLANE_NATS_{identity.upper()}_PASSWORD}}@nats:4222"


def test_no_secret_is_written_in_the_compose_file_and_env_makes_every_one() -> None:
    from services.cli import main

    text = (REPO / "docker-compose.yml").read_text()
    assert "gpuplane:gpuplane@" not in text
    assert COMPOSE["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    needed = _variables(text) | _variables((REPO / "deploy/nats/nats.conf").read_text())
    needed -= {"GPUPLANE_HOST_NAME"}  # a name, not a secret: defaults to gpu-host
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compose-env"]) == 0
    made = {line.split("=", 1)[0] for line in out.getvalue().splitlines() if "=" in line and line[0] != "#"}
    assert needed <= made, f"compose needs {needed - made}, which compose-env does not write"


def test_the_database_role_in_compose_is_no_superuser() -> None:
    script = (REPO / "deploy/postgres/init-gpuplane.sh").read_text()
    assert "NOSUPERUSER" in script and "CREATE DATABASE gpuplane OWNER gpuplane" in script
    assert COMPOSE["services"]["postgres"]["environment"]["POSTGRES_USER"] == "postgres"
    assert COMPOSE["services"]["api"]["environment"]["GPUPLANE_DATABASE_URL"].startswith("postgresql://gpuplane:${")


def test_the_image_copies_every_package_the_project_ships() -> None:
    import tomllib

    text = (REPO / "Containerfile").read_text()
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in packages:
        name = package.rstrip("*")
        assert f"COPY {name} ./{name}" in text, f"the image lacks {name}"


def test_a_container_gets_only_its_own_secrets() -> None:
    for name, svc in COMPOSE["services"].items():
        if name != "nats":
            assert "env_file" not in svc, f"{name} would get every secret in .env"
        env = svc.get("environment", {})
        others = {v for k, v in env.items() if "PASSWORD" in str(v) and name not in ("postgres", "nats")}
        for value in others:
            identity = {"worker-gpu0": "WORKER", "nats-init": "ADMIN"}.get(name, name.upper())
            assert "GPUPLANE_DB_PASSWORD" in value or f"GPUPLANE_NATS_{identity}_PASSWORD" in value, (name, value)
    assert "GPUPLANE_API_TOKEN" in COMPOSE["services"]["api"]["environment"]
    holders = [n for n, s in COMPOSE["services"].items() if "GPUPLANE_API_TOKEN" in s.get("environment", {})]
    assert holders == ["api"]
