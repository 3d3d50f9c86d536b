"""The real ``ContainerEngine``: podman-compose or docker compose, and the podman or docker CLI.

Every command runs as an asyncio subprocess (never through a shell) with a time limit; a command
that is missing or hangs raises ``EngineUnavailable`` saying which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.orchestrator import cdi
from services.orchestrator.core.inspect import (
    PROJECT_LABEL,
    parse_compose_version,
    parse_inspect,
    parse_services,
)
from services.orchestrator.core.model import CommandResult, ContainerView
from services.orchestrator.ports import EngineUnavailable
from shared.errors import ConfigError
from shared.names import NAME_RULE, check_name, is_valid_name

log = logging.getLogger(__name__)

COMPOSE_CMD_SETTING = "GPUPLANE_COMPOSE_CMD"
CONTAINER_CMD_SETTING = "GPUPLANE_CONTAINER_CMD"
COMPOSE_PROJECT_SETTING = "GPUPLANE_COMPOSE_PROJECT"
PODMAN_COMPOSE_MIN = (1, 6)
DOCKER_COMPOSE_MIN = (2, 0)
PROBE_TIMEOUT_S = 30.0
"""Longest a version or ``ps`` probe in ``problems()`` may take (at most ``command_timeout_s``)."""
OUTPUT_TAIL_CHARS = 4000


def is_docker(compose_cmd: Sequence[str]) -> bool:
    """Whether the compose command is docker's (``docker compose`` or ``docker-compose``)."""
    return bool(compose_cmd) and Path(compose_cmd[0]).name.startswith("docker")


def container_cmd_for(compose_cmd: Sequence[str]) -> tuple[str, ...]:
    """The engine CLI that goes with a compose command: docker for docker compose, podman otherwise."""
    return ("docker",) if is_docker(compose_cmd) else ("podman",)


@dataclass(frozen=True)
class _Output:
    returncode: int
    stdout: str
    stderr: str


class ComposeEngine:
    """A compose project driven through its compose command and inspected through the engine's CLI.

    ``env`` is the whole environment of every command (``None``: this process's); ``PATH`` in it is
    where commands are looked for, and a bare compose command is also looked for next to
    ``sys.executable`` (the virtual environment's ``bin``, where pip puts podman-compose).

    ``project_problem`` says why the project name is unusable (whoever chose it knows where it came
    from); a project name that breaks the name rule is unusable too. Either way ``problems()`` says so
    and no command is built with it.
    """

    def __init__(
        self,
        compose_cmd: Sequence[str],
        compose_files: Sequence[Path],
        override_file: Path,
        project: str,
        container_cmd: Sequence[str] | None = None,
        cdi_dirs: Sequence[Path] = cdi.DEFAULT_CDI_DIRS,
        command_timeout_s: float = 300.0,
        env: Mapping[str, str] | None = None,
        project_problem: str | None = None,
    ) -> None:
        if not compose_cmd:
            raise ConfigError(f"{COMPOSE_CMD_SETTING} is empty; use podman-compose or 'docker compose'")
        self.compose_cmd = tuple(compose_cmd)
        self.compose_files = tuple(compose_files)
        self.override_file = override_file
        self.project = project
        if project_problem is None and not is_valid_name(project):
            project_problem = (
                f"the compose project name {project!r} is not a valid name: use {NAME_RULE}; "
                f"set {COMPOSE_PROJECT_SETTING}"
            )
        self.project_problem = project_problem
        self.container_cmd = tuple(container_cmd) if container_cmd else container_cmd_for(compose_cmd)
        self.cdi_dirs = tuple(cdi_dirs)
        self.command_timeout_s = command_timeout_s
        self.env = dict(env) if env is not None else None
        self.docker = is_docker(self.compose_cmd)

    # --- what is run -------------------------------------------------------------------------

    def compose_argv(self) -> list[str]:
        """``<compose> -p P -f base... [-f override]``: the override only while its file exists.

        Raises ``ConfigError`` when the project name is unusable: it would reach the command line.
        """
        self._check_project()
        return self._compose_words()

    def describe(self) -> str:
        # Shown even with an unusable project name, which the status's problems then explain.
        return shlex.join(self._compose_words())

    def _compose_words(self) -> list[str]:
        argv = [*self.compose_cmd, "-p", self.project]
        for path in self.compose_files:
            argv += ["-f", str(path)]
        if self.override_file.exists():
            argv += ["-f", str(self.override_file)]
        return argv

    def _check_project(self) -> None:
        if self.project_problem is not None:
            raise ConfigError(self.project_problem)

    # --- Protocol ----------------------------------------------------------------------------

    async def problems(self, device_ids: Collection[str]) -> list[str]:
        if not self.compose_files:
            return ["no compose project to apply to: set GPUPLANE_COMPOSE_FILES to your AI stack's compose file(s)"]
        if self.project_problem is not None:
            # The engine checks below run commands with the project name; the files need none.
            return [self.project_problem, *await asyncio.to_thread(self._file_problems)]
        found: list[str] = []
        try:
            await self._check_engine(found)
            engine_found = True
        except EngineUnavailable as exc:
            found.append(str(exc))
            engine_found = False
        try:
            await self._check_compose(found, engine_found)
        except EngineUnavailable as exc:
            found.append(str(exc))
        found.extend(await asyncio.to_thread(self._file_problems))
        if not self.docker and device_ids:
            found.extend((await asyncio.to_thread(cdi.scan, self.cdi_dirs)).problems(device_ids))
        return found

    async def project_services(self) -> dict[str, tuple[str, ...]]:
        """Raises ``ConfigError`` naming a compose file that cannot be read or is malformed."""
        docs = await asyncio.to_thread(lambda: [_load_compose_file(p) for p in self.compose_files])
        try:
            return parse_services(docs)
        except ConfigError as exc:
            files = ", ".join(str(p) for p in self.compose_files)
            raise ConfigError(f"{files}: {exc}") from exc

    async def containers(self) -> list[ContainerView]:
        found = await self._inspect_project()
        if found is not None and found[0].returncode != 0 and found[1] == []:
            # The one container there was removed between ps and inspect (a service being recreated): ask again.
            found = await self._inspect_project()
        if found is None:
            return []
        out, docs = found
        # A container removed between ps and inspect is left out, with a non-zero status: the others still count.
        if docs is None or (out.returncode != 0 and not docs):
            raise EngineUnavailable(self._failure("container inspect", out))
        views = [parse_inspect(doc) for doc in docs if isinstance(doc, Mapping)]
        return sorted(views, key=lambda v: (v.service, v.name, v.id))

    async def _inspect_project(self) -> tuple[_Output, list[Any] | None] | None:
        """``inspect`` of the project's containers and its documents; None when it has none."""
        ids = await self._container_ids()
        if not ids:
            return None
        out = await self._run(self.container_cmd, ["container", "inspect", *ids], self.command_timeout_s)
        return out, _json_list(out.stdout)

    async def recreate(self, service: str) -> CommandResult:
        """Raises ``InvalidName`` for a service name that breaks the name rule, ``ConfigError`` for an
        unusable project name: names are checked where they loaded too, and again here, at the command line."""
        check_name(service, "compose service", field="service")
        argv = [*self.compose_argv(), "up", "-d", "--force-recreate", "--no-deps", service]
        log.info("recreating %s: %s", service, shlex.join(argv))
        args = argv[len(self.compose_cmd) :]
        out = await self._run(self.compose_cmd, args, self.command_timeout_s, merge_output=True)
        if out.returncode != 0:
            log.warning("%s exited %d: %s", shlex.join(argv), out.returncode, _last_line(out.stdout))
        return CommandResult(tuple(argv), out.returncode, out.stdout[-OUTPUT_TAIL_CHARS:])

    async def run_healthcheck(self, container_id: str) -> None:
        if self.docker:
            return
        out = await self._run(self.container_cmd, ["healthcheck", "run", container_id], self.command_timeout_s)
        # 0 healthy, 1 unhealthy (inspect shows it); anything else: no healthcheck, or the container is gone.
        if out.returncode not in (0, 1):
            log.debug("healthcheck of %s not run: %s", container_id, _last_line(out.stderr))

    async def device_env(self) -> dict[str, dict[str, str]]:
        if self.docker:
            return {}
        scan = await asyncio.to_thread(cdi.scan, self.cdi_dirs)
        return {name: dict(device.env) for name, device in scan.devices.items()}

    async def logs_tail(self, container_id: str, lines: int = 10) -> str:
        args = ["logs", "--tail", str(max(lines, 0)), container_id]
        try:
            out = await self._run(
                self.container_cmd, args, min(self.command_timeout_s, PROBE_TIMEOUT_S), merge_output=True
            )
        except EngineUnavailable as exc:
            log.debug("no logs of %s: %s", container_id, exc)
            return ""
        return out.stdout.rstrip("\n") if out.returncode == 0 else ""

    # --- checks ------------------------------------------------------------------------------

    async def _check_compose(self, found: list[str], engine_found: bool) -> None:
        out = await self._run(self.compose_cmd, ["version"], min(self.command_timeout_s, PROBE_TIMEOUT_S))
        version = parse_compose_version(out.stdout + "\n" + out.stderr)
        if version is None:
            if engine_found:  # else podman-compose only complains that podman is missing, as found already
                said = _last_line(out.stderr) or _last_line(out.stdout) or f"exit status {out.returncode}"
                found.append(
                    f"`{shlex.join(self.compose_cmd)} version` does not report a podman-compose or docker compose "
                    f"version ({said}); set {COMPOSE_CMD_SETTING} to podman-compose (1.6 or newer) or 'docker compose'"
                )
        elif version.flavour == "podman-compose" and version.version < PODMAN_COMPOSE_MIN:
            found.append(
                f"podman-compose {version.text} is too old: 1.6 or newer is needed to give containers GPUs "
                "through CDI; upgrade it with `pip install 'podman-compose>=1.6'`"
            )
        elif version.flavour == "docker-compose" and version.version < DOCKER_COMPOSE_MIN:
            found.append(
                f"docker-compose {version.text} is too old: Docker Compose v2 is needed; install the compose "
                f"plugin (https://docs.docker.com/compose/install/) and set {COMPOSE_CMD_SETTING}='docker compose'"
            )

    async def _check_engine(self, found: list[str]) -> None:
        out = await self._run(self.container_cmd, self._ps_args(), min(self.command_timeout_s, PROBE_TIMEOUT_S))
        if out.returncode != 0:
            found.append(
                f"{shlex.join(self.container_cmd)} does not answer: {self._failure('ps', out)}"
                + ("; is the docker daemon running and may this user talk to it?" if self.docker else "")
            )

    # --- running commands --------------------------------------------------------------------

    def _ps_args(self) -> list[str]:
        self._check_project()
        return ["ps", "-a", "--no-trunc", "--filter", f"label={PROJECT_LABEL}={self.project}", "--format", "{{.ID}}"]

    async def _container_ids(self) -> list[str]:
        out = await self._run(self.container_cmd, self._ps_args(), self.command_timeout_s)
        if out.returncode != 0:
            raise EngineUnavailable(self._failure("ps", out))
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]

    def _failure(self, what: str, out: _Output) -> str:
        said = _last_line(out.stderr) or _last_line(out.stdout) or "no output"
        return f"`{self.container_cmd[0]} {what}` exited {out.returncode}: {said}"

    def _search_path(self) -> str | None:
        return (self.env if self.env is not None else os.environ).get("PATH")

    def _resolve(self, cmd: Sequence[str]) -> str:
        """The executable of ``cmd``; raises ``EngineUnavailable`` saying how to install it."""
        name = cmd[0]
        if os.sep in name:
            if os.access(name, os.X_OK) and Path(name).is_file():
                return name
        else:
            found = shutil.which(name, path=self._search_path())
            if found:
                return found
            beside = Path(sys.executable).parent / name
            if os.access(beside, os.X_OK) and beside.is_file():
                return str(beside)
        setting = COMPOSE_CMD_SETTING if cmd == self.compose_cmd else CONTAINER_CMD_SETTING
        raise EngineUnavailable(f"{name} not found ({setting}={shlex.join(cmd)}): {_install_hint(name)}")

    async def _run(
        self, cmd: Sequence[str], args: Sequence[str], timeout_s: float, merge_output: bool = False
    ) -> _Output:
        """Run ``cmd`` (the compose or the container command) with ``args``."""
        executable = self._resolve(cmd)
        shown = shlex.join([*cmd, *args])
        log.debug("running %s", shown)
        try:
            process = await asyncio.create_subprocess_exec(
                executable,
                *cmd[1:],
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT if merge_output else asyncio.subprocess.PIPE,
                env=self.env,
                # Its own process group, so that a timeout also ends what it started (podman-compose runs podman).
                start_new_session=True,
            )
        except OSError as exc:
            raise EngineUnavailable(f"cannot run {shown}: {exc}") from exc
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            await _kill(process)
            raise EngineUnavailable(f"{shown} did not finish within {timeout_s:g} s") from None
        except asyncio.CancelledError:
            await _kill(process)
            raise
        return _Output(
            process.returncode if process.returncode is not None else -1,
            stdout.decode(errors="replace"),
            (stderr or b"").decode(errors="replace"),
        )

    def _file_problems(self) -> list[str]:
        found: list[str] = []
        for path in self.compose_files:
            if not path.is_file():
                found.append(f"the compose file {path} does not exist; check GPUPLANE_COMPOSE_FILES")
                continue
            try:
                _load_compose_file(path)
            except ConfigError as exc:
                found.append(str(exc))
        return found


async def _kill(process: asyncio.subprocess.Process) -> None:
    """End the process and its process group (children that outlived it included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _install_hint(command: str) -> str:
    name = Path(command).name
    if name.startswith("podman-compose"):
        return "install it with `pip install 'podman-compose>=1.6'`"
    if name.startswith("podman"):
        return "install podman 4 or newer (Debian/Ubuntu: `apt-get install podman`)"
    if name.startswith("docker"):
        return "install Docker Engine with the compose plugin (https://docs.docker.com/engine/install/)"
    return "install it or fix the setting"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _json_list(text: str) -> list[Any] | None:
    try:
        doc = json.loads(text) if text.strip() else []
    except ValueError:
        return None
    return doc if isinstance(doc, list) else None


class _ComposeLoader(yaml.SafeLoader):
    """Safe YAML that also reads compose's ``!reset`` and ``!override`` tags (as their plain value)."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ComposeLoader.add_constructor("!reset", _plain)
_ComposeLoader.add_constructor("!override", _plain)


def load_compose_documents(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The top-level mappings of the compose files that exist (``problems()`` reports missing ones).

    Raises ``ConfigError`` naming a file that cannot be read, is not a compose mapping, or names a
    service against the name rule (``shared.names``).
    """
    return [_load_compose_file(path) for path in paths if path.exists()]


def _load_compose_file(path: Path) -> dict[str, Any]:
    """A compose file's top-level mapping, its service names checked. Raises ``ConfigError`` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the compose file {path} cannot be read: {exc}") from exc
    try:
        doc = yaml.load(text, Loader=_ComposeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the compose file {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"the compose file {path} does not hold a mapping with services:")
    services = doc.get("services")
    if isinstance(services, dict):
        for name in services:
            # A service name ends up in the compose command line (and the planner's catalog): stopped here.
            if not is_valid_name(str(name)):
                raise ConfigError(
                    f"the compose file {path}: service {str(name)!r} is not a valid name: use {NAME_RULE}"
                )
    return doc
