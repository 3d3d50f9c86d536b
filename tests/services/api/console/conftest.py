"""The console in a real browser: Chromium (Debian's package) driven by Playwright, against a real
`gpuplane up` whose orchestrator applies to the busybox demo compose project in a private podman.

``console_stack`` is one stack per test module (it takes a while to start); ``page`` is a fresh,
signed-in browser tab per test. ``shot(page, name)`` writes docs/console/<name>.png, the pictures
docs/console.md shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from services.stack.embedded import free_port
from tests.podman import BUSYBOX_IMAGE, PodmanSandbox, compose_executable
from tests.podman import missing as podman_missing
from tests.services.stack.test_up import Stack, launch

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[4]
CHROMIUM = Path(os.environ.get("GPUPLANE_TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(os.environ.get("GPUPLANE_SCREENSHOT_DIR", str(REPO / "docs" / "console")))
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's own sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class ConsoleStack:
    """A running `gpuplane up` and what a browser test needs of it."""

    stack: Stack
    fleet_file: Path
    project: str | None

    @property
    def api(self) -> str:
        return self.stack.api

    @property
    def token(self) -> str:
        return self.stack.token

    @property
    def login_url(self) -> str:
        """The banner's login link."""
        return f"{self.api}/?token={self.token}"

    @property
    def http(self) -> httpx.Client:
        return self.stack.http

    def set_fleet(self, mutate: Callable[[dict[str, object]], None]) -> None:
        """Edit the simulated fleet file as a person would (the detector re-reads it on save)."""
        fleet = yaml.safe_load(self.fleet_file.read_text())
        mutate(fleet)
        self.fleet_file.write_text(yaml.safe_dump(fleet, sort_keys=False))


def chromium_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def demo_project(sandbox: PodmanSandbox, directory: Path) -> tuple[Path, str]:
    """deploy/demo's compose project, on the sandbox's busybox image, under a name of its own."""
    document = yaml.safe_load((REPO / "deploy/demo/docker-compose.yml").read_text())
    name = f"gppconsole{os.getpid()}"
    document["name"] = name
    for service in document["services"].values():
        service["image"] = BUSYBOX_IMAGE
        if "command" not in service:
            # The demo's model service runs a real engine; the console's pages only need a container that stays up.
            service["command"] = ["sh", "-c", "trap 'exit 0' TERM; sleep 86400 & wait"]
            for key in ("healthcheck", "ports"):
                service.pop(key, None)
    directory.mkdir(parents=True, exist_ok=True)
    compose_file = directory / "docker-compose.yml"
    compose_file.write_text(yaml.safe_dump(document, sort_keys=False))
    return compose_file, name


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    """`gpuplane up` on a copy of the reference fleet, applying to the demo compose project."""
    reason = chromium_missing() or podman_missing()
    if reason:
        pytest.skip(f"the console's browser tests need Chromium, Playwright and podman: {reason}")
    root = tmp_path_factory.mktemp("console")
    fleet = root / "fleet.yaml"
    shutil.copy(REPO / "deploy/fleets/reference.yaml", fleet)
    sandbox = PodmanSandbox(root / "podman")
    sandbox.start()
    compose_file, project = demo_project(sandbox, root / "demo")
    stack: Stack | None = None
    try:
        subprocess.run(
            [str(compose_executable()), "-f", str(compose_file), "up", "-d"],
            env=sandbox.env, check=True, capture_output=True, timeout=180,
        )
        env = {
            **sandbox.env,
            "GPUPLANE_FLEET": str(fleet),
            "GPUPLANE_COMPOSE_FILES": str(compose_file),
            "GPUPLANE_COMPOSE_PROJECT": project,
            "GPUPLANE_COMPOSE_CMD": str(compose_executable()),
            "GPUPLANE_DEVICE_IDS": "index",  # the test CDI spec names GPUs by index
            "GPUPLANE_HEALTH_GRACE_S": "2",
            "GPUPLANE_HEALTH_POLL_S": "0.3",
        }
        stack = launch(root, free_port(), free_port(), env)
        yield ConsoleStack(stack, fleet, project)
    finally:
        if stack is not None:
            stack.stop()
        subprocess.run(
            [str(compose_executable()), "-f", str(compose_file), "down", "-t", "0"],
            env=sandbox.env, check=False, capture_output=True, timeout=180,
        )
        sandbox.close()


@contextmanager
def plain_console_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, fleet_text: str, extra_env: dict[str, str] | None = None
) -> Iterator[ConsoleStack]:
    """`gpuplane up` on the fleet ``fleet_text`` (no compose project), stopped afterwards."""
    reason = chromium_missing()
    if reason:
        pytest.skip(f"the console's browser tests need Chromium and Playwright: {reason}")
    root = tmp_path_factory.mktemp(name)
    fleet = root / "fleet.yaml"
    fleet.write_text(fleet_text)
    stack = launch(root, free_port(), free_port(), {"GPUPLANE_FLEET": str(fleet), **(extra_env or {})})
    try:
        yield ConsoleStack(stack, fleet, None)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def empty_console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    """`gpuplane up` on a fleet with no GPU at all (and no compose project)."""
    with plain_console_stack(tmp_path_factory, "console-empty", "gpus: []\n") as stack:
        yield stack


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one test module. Not for the session: Playwright's sync API keeps an event loop
    running in the main thread while it is open, and the asyncio tests of later modules need it gone."""
    reason = chromium_missing()
    if reason:
        pytest.skip(f"the console's browser tests need Chromium and Playwright: {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def signed_in_page(browser: object, stack: ConsoleStack, viewport: dict[str, int] = DESKTOP) -> object:
    """A new tab that opened the banner's login link (and so holds a session cookie)."""
    context = browser.new_context(viewport=viewport)  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.console_errors = errors  # type: ignore[attr-defined]
    page.goto(stack.login_url)
    page.wait_for_selector("main#view[data-page]")
    return page


@pytest.fixture
def page(browser: object, console_stack: ConsoleStack) -> Iterator[object]:
    """A signed-in tab at 1280×800 on ``console_stack``."""
    tab = signed_in_page(browser, console_stack)
    try:
        yield tab
    finally:
        tab.context.close()  # type: ignore[attr-defined]


@pytest.fixture
def shot() -> Callable[[object, str], Path]:
    def take(page: object, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        return path

    return take
