"""Fixtures with real podman and podman-compose (``tests/podman.py``); tests using them are integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.orchestrator.cdi import DEFAULT_CDI_DIRS
from services.orchestrator.engine import ComposeEngine
from tests.podman import ComposeProject, PodmanSandbox, missing

PODMAN_FIXTURES = {"podman_sandbox", "compose_project", "podman_engine"}


@pytest.fixture(scope="session")
def podman_sandbox() -> Iterator[PodmanSandbox]:
    """One private podman storage, busybox image and test CDI spec for the whole session."""
    reason = missing()
    if reason:
        pytest.skip(f"real podman tests need podman, runc, busybox-static and podman-compose: {reason}")
    sandbox = PodmanSandbox()
    try:
        sandbox.start()
        yield sandbox
    finally:
        sandbox.close()


@pytest.fixture
def compose_project(podman_sandbox: PodmanSandbox, tmp_path: Path) -> Iterator[ComposeProject]:
    """A running project: ``llm`` (healthcheck), ``proxy`` (depends on llm), ``vision``, ``crasher`` (exits 3)."""
    project = podman_sandbox.write_project(tmp_path / "stack")
    try:
        podman_sandbox.up(project)
        yield project
    finally:
        podman_sandbox.remove_project(project)


def engine_for(sandbox: PodmanSandbox, project: ComposeProject, /, **overrides: object) -> ComposeEngine:
    """A ``ComposeEngine`` on ``project`` in ``sandbox``; ``overrides`` replace constructor arguments."""
    kwargs: dict[str, object] = {
        "compose_cmd": ["podman-compose"],
        "compose_files": [project.compose_file],
        "override_file": project.override_file,
        "project": project.name,
        "container_cmd": ["podman"],
        "cdi_dirs": DEFAULT_CDI_DIRS,
        "command_timeout_s": 60.0,
        "env": sandbox.env,
        **overrides,
    }
    return ComposeEngine(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def podman_engine(podman_sandbox: PodmanSandbox, compose_project: ComposeProject) -> ComposeEngine:
    return engine_for(podman_sandbox, compose_project)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that runs real podman is an integration test, marked or not."""
    for item in items:
        if PODMAN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
