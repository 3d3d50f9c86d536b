"""Pure readers of engine output: inspect documents, compose versions, project names, depends_on."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from services.orchestrator.core.inspect import (
    ComposeVersion,
    normalize_project_name,
    parse_compose_version,
    parse_inspect,
    parse_services,
    parse_timestamp,
    parse_version_number,
    project_name,
)
from services.orchestrator.core.model import TARGET_LABEL
from shared.errors import ConfigError
from tests.builders import make_gpu
from tests.services.orchestrator.fixtures import load_json

PODMAN = {d["Name"].rsplit("_", 2)[1]: d for d in load_json("podman-4.3.1-inspect.json")}
DOCKER = {d["Name"].split("-")[1]: d for d in load_json("docker-27-inspect.json")}
GPU1 = make_gpu(1).uuid


def test_podman_gpu_container() -> None:
    view = parse_inspect(PODMAN["llm"])
    assert view.id == PODMAN["llm"]["Id"]
    assert (view.name, view.service, view.status, view.running, view.restarting) == (
        "capture_llm_1",
        "llm",
        "running",
        True,
        False,
    )
    assert view.device_ids == (GPU1,)
    assert view.env["NVIDIA_VISIBLE_DEVICES"] == "1"  # injected by the CDI spec
    assert view.env["VRAM_BUDGET_GB"] == "3.5"
    assert view.labels[TARGET_LABEL] and view.target_digest == view.labels[TARGET_LABEL]
    assert view.health == "healthy" and view.has_healthcheck
    assert view.exit_code is None and view.restart_count == 0
    assert view.started_at == datetime(2026, 11, 23, 14, 24, 25, 374129, tzinfo=UTC)
    assert view.created_at == datetime(2026, 11, 23, 14, 24, 25, 151451, tzinfo=UTC)


def test_podman_container_without_healthcheck_or_gpu() -> None:
    view = parse_inspect(PODMAN["proxy"])
    assert view.health is None and not view.has_healthcheck  # podman's Health dict is there, its Status empty
    assert view.device_ids == ()
    assert "NVIDIA_VISIBLE_DEVICES" not in view.env


def test_podman_exited_container() -> None:
    view = parse_inspect(PODMAN["crasher"])
    assert (view.status, view.running, view.exit_code, view.health) == ("exited", False, 3, None)


def test_docker_gpu_container() -> None:
    view = parse_inspect(DOCKER["llm"])
    assert (view.name, view.service, view.status, view.running) == ("stack-llm-1", "llm", "running", True)
    assert view.device_ids == (GPU1,)
    assert view.health == "healthy" and view.restart_count == 2
    assert view.env["VRAM_BUDGET_GB"] == "20" and view.target_digest == "0123456789abcdef"
    assert view.started_at == datetime(2026, 3, 1, 9, 15, 3, 987654, tzinfo=UTC)


def test_docker_all_gpus_exited_container() -> None:
    view = parse_inspect(DOCKER["embed"])
    assert view.device_ids == ("all",)  # Driver "" with capability gpu: `--gpus all`
    assert (view.running, view.exit_code, view.health) == (False, 137, None)


def with_changes(doc: dict[str, Any], **paths: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``Section__Key=value`` set (``None`` removes the key)."""
    doc = copy.deepcopy(doc)
    for path, value in paths.items():
        *parents, key = path.split("__")
        target = doc
        for parent in parents:
            target = target.setdefault(parent, {})
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return doc


PODMAN_CREATE = ["podman", "create", "--name=x", "--label", "a=b"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"Config__CreateCommand": [*PODMAN_CREATE, "--device", "nvidia.com/gpu=0", "img"]}, ("0",)),
        (
            {"Config__CreateCommand": [*PODMAN_CREATE, "--device=nvidia.com/gpu=1", "--device=nvidia.com/gpu=0"]},
            ("1", "0"),
        ),
        ({"Config__CreateCommand": [*PODMAN_CREATE, "--device", "/dev/fuse", "img"]}, ()),
        # The container's own arguments after the image never count.
        ({"Config__CreateCommand": [*PODMAN_CREATE, "img", "serve", "--device", "nvidia.com/gpu=3"]}, ()),
        (
            {
                "Config__CreateCommand": None,
                "HostConfig__Devices": [
                    {"PathOnHost": "nvidia.com/gpu=GPU-a", "PathInContainer": "", "CgroupPermissions": ""}
                ],
            },
            ("GPU-a",),
        ),
        (
            {
                "Config__CreateCommand": [*PODMAN_CREATE, "--device", "nvidia.com/gpu=GPU-a", "img"],
                "HostConfig__Devices": [{"PathOnHost": "nvidia.com/gpu=GPU-a"}, {"PathOnHost": "/dev/nvidia0"}],
            },
            ("GPU-a",),
        ),
        ({"HostConfig__DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["1"], "Capabilities": [["gpu"]]}]}, ("1",)),
        (
            {"HostConfig__DeviceRequests": [{"Driver": "", "DeviceIDs": ["0", "2"], "Capabilities": [["gpu"]]}]},
            ("0", "2"),
        ),
        ({"HostConfig__DeviceRequests": [{"Driver": "nvidia", "Count": 2, "Capabilities": [["utility"]]}]}, ("0", "1")),
        ({"HostConfig__DeviceRequests": [{"Driver": "tpu", "Count": -1, "Capabilities": [["tpu"]]}]}, ()),
        ({"HostConfig__DeviceRequests": None}, ()),
    ],
)
def test_device_ids(changes: dict[str, Any], expected: tuple[str, ...]) -> None:
    base = with_changes(PODMAN["proxy"], ImageName="img", Config__CreateCommand=None, HostConfig__Devices=[])
    assert parse_inspect(with_changes(base, **changes)).device_ids == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"State__Health": {"Status": "unhealthy"}}, "unhealthy"),
        ({"State__Health": {"Status": ""}, "Config__Healthcheck": {"Test": ["CMD", "true"]}}, "starting"),
        ({"State__Health": None, "Config__Healthcheck": {"Test": ["CMD", "true"]}}, "starting"),
        ({"State__Health": None, "Config__Healthcheck": {"Test": ["NONE"]}}, None),
        ({"State__Health": {"Status": ""}, "Config__Healthcheck": None}, None),
        ({"State__Health": None, "State__Healthcheck": {"Status": "healthy"}}, "healthy"),  # podman 3
    ],
)
def test_health(changes: dict[str, Any], expected: str | None) -> None:
    assert parse_inspect(with_changes(PODMAN["proxy"], **changes)).health == expected


@pytest.mark.parametrize(
    ("state", "exit_code"),
    [
        ({"Status": "exited", "Running": False, "ExitCode": 1}, 1),
        ({"Status": "running", "Running": True, "ExitCode": 0}, None),
        ({"Status": "created", "Running": False, "ExitCode": 0}, None),  # never ran
        ({"Status": "exited", "Running": False}, None),
    ],
)
def test_exit_code(state: dict[str, Any], exit_code: int | None) -> None:
    assert parse_inspect({"Id": "x", "State": state}).exit_code == exit_code


def test_minimal_document() -> None:
    view = parse_inspect({"Id": "abc"})
    assert (view.id, view.name, view.service, view.status, view.running) == ("abc", "", "", "", False)
    assert (view.env, view.labels, view.device_ids, view.started_at, view.created_at) == ({}, {}, (), None, None)


def test_env_entries() -> None:
    view = parse_inspect({"Id": "x", "Config": {"Env": ["A=1", "B=x=y", "C", "A=2", "=bad"]}})
    assert view.env == {"A": "2", "B": "x=y", "C": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T14:13:40.230121498Z", datetime(2026, 11, 23, 14, 13, 40, 230121, tzinfo=UTC)),
        ("2026-11-23T14:13:40Z", datetime(2026, 11, 23, 14, 13, 40, tzinfo=UTC)),
        (
            "2026-11-23T14:13:40.5+02:00",
            datetime(2026, 11, 23, 14, 13, 40, 500000, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2026-11-23 14:13:40.230121498 +0000 UTC", datetime(2026, 11, 23, 14, 13, 40, 230121, tzinfo=UTC)),
        ("2026-11-23T14:13:40.1", datetime(2026, 11, 23, 14, 13, 40, 100000, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),
        ("yesterday", None),
        ("2026-13-45T14:13:40Z", None),
        (None, None),
        (1795443557, None),
    ],
)
def test_timestamps(text: object, expected: datetime | None) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            "podman-compose version 1.6.0\npodman version 4.3.1\n",
            ComposeVersion("podman-compose", (1, 6, 0), (4, 3, 1)),
        ),
        ("podman-compose version 1.5.0\n", ComposeVersion("podman-compose", (1, 5, 0))),
        (
            # podman-compose 1.0.x prints its probe of podman too.
            "podman-compose version: 1.0.6\n['podman', '--version', '']\nusing podman version: 4.3.1\n"
            "podman-compose version 1.0.6\npodman --version \npodman version 4.3.1\nexit code: 0\n",
            ComposeVersion("podman-compose", (1, 0, 6), (4, 3, 1)),
        ),
        ("Docker Compose version v2.29.1\n", ComposeVersion("docker-compose", (2, 29, 1))),
        ("Docker Compose version 2.24.6-desktop.1\n", ComposeVersion("docker-compose", (2, 24, 6))),
        ("docker-compose version 1.29.2, build 5becea4c\n", ComposeVersion("docker-compose", (1, 29, 2))),
        ("usage: something else\n", None),
        ("", None),
    ],
)
def test_compose_version(output: str, expected: ComposeVersion | None) -> None:
    assert parse_compose_version(output) == expected


def test_version_helpers() -> None:
    assert parse_version_number("v2.29.1-desktop.1") == (2, 29, 1)
    assert parse_version_number("no digits") is None
    assert ComposeVersion("podman-compose", (1, 6, 0)).text == "1.6.0"
    assert (1, 5, 9) < (1, 6) <= (1, 6, 0)  # how the engine compares against its minimum


@pytest.mark.parametrize(
    ("files", "env", "docs", "expected"),
    [
        (["/srv/My Stack/compose.yml"], {}, [], "mystack"),
        (["/srv/stack/compose.yml"], {"COMPOSE_PROJECT_NAME": "Other"}, [{"name": "named"}], "other"),
        (["/srv/stack/compose.yml"], {"COMPOSE_PROJECT_NAME": ""}, [{"name": "named"}], "named"),
        (["/srv/a/compose.yml", "/srv/b/more.yml"], {}, [{"name": "first"}, {"name": "Last_One"}], "last_one"),
        (["/srv/a/compose.yml", "/srv/b/more.yml"], {}, [{"name": "first"}, {"services": {}}], "first"),
        (["/srv/_.AI-stack/compose.yml"], {}, [], "ai-stack"),
        (["/srv/stack/compose.yml"], {}, [{"name": "--x.y"}], "xy"),
    ],
)
def test_project_name(files: list[str], env: dict[str, str], docs: list[dict[str, Any]], expected: str) -> None:
    assert project_name([Path(f) for f in files], env, docs) == expected


def test_project_name_errors() -> None:
    with pytest.raises(ConfigError, match="COMPOSE_PROJECT_NAME"):
        project_name([Path("/srv/x/compose.yml")], {"COMPOSE_PROJECT_NAME": "__"})
    with pytest.raises(ConfigError, match="no compose file"):
        project_name([], {})
    assert normalize_project_name("Élan-2") == "lan-2"


def test_parse_services() -> None:
    base = {
        "services": {
            "llm": {"image": "x"},
            "proxy": {"depends_on": ["llm"]},
            "ui": {"depends_on": {"proxy": {"condition": "service_started"}, "llm": {"condition": "service_healthy"}}},
            "worker": {"links": ["llm:model"]},
            "bare": None,
        }
    }
    extra = {"services": {"proxy": {"depends_on": ["cache"]}, "cache": {"image": "y"}}}
    assert parse_services([base, extra, {"volumes": {}}]) == {
        "llm": (),
        "proxy": ("cache", "llm"),
        "ui": ("llm", "proxy"),
        "worker": ("llm",),
        "bare": (),
        "cache": (),
    }
    assert parse_services([{"services": {"a": {"depends_on": "b"}, "b": {}}}]) == {"a": ("b",), "b": ()}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"services": ["a", "b"]}, "services: must be a mapping"),
        ({"services": {"a": "image"}}, "services.a must be a mapping"),
        ({"services": {"a": {"depends_on": 3}}}, "services.a.depends_on"),
    ],
)
def test_parse_services_errors(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_services([doc])
