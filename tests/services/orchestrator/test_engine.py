"""``ComposeEngine``: with fake CLIs (scripts on PATH) for edge cases, and with real podman and podman-compose."""

from __future__ import annotations

import asyncio
import re
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml

from services.orchestrator.core.model import TARGET_LABEL, ServiceTarget
from services.orchestrator.engine import ComposeEngine, container_cmd_for, load_compose_documents
from services.orchestrator.ports import ContainerEngine, EngineUnavailable
from shared.errors import ConfigError
from shared.names import InvalidName
from tests.builders import make_gpu
from tests.podman import ComposeProject, PodmanSandbox
from tests.realdeps import pids_alive
from tests.services.orchestrator.conftest import engine_for
from tests.services.orchestrator.fixtures import FIXTURES

GPU0, GPU1 = make_gpu(0).uuid, make_gpu(1).uuid
SPEC_NAMES = ", ".join(name for i in range(4) for name in (str(i), make_gpu(i).uuid))


def fake_tool(folder: Path, name: str, body: str) -> Path:
    """An executable ``folder/name`` running the shell ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_engine(tmp_path: Path, compose_cmd: list[str], **kwargs: object) -> ComposeEngine:
    compose_file = tmp_path / "compose.yml"
    if not compose_file.exists():
        compose_file.write_text("services:\n  llm: {image: x}\n  ui: {image: y, depends_on: [llm]}\n")
    args: dict[str, object] = {
        "compose_files": [compose_file],
        "override_file": tmp_path / "override.yml",
        "project": "stack",
        "cdi_dirs": [tmp_path / "cdi"],
        "command_timeout_s": 10.0,
        "env": {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"},
        **kwargs,
    }
    return ComposeEngine(compose_cmd, **args)  # type: ignore[arg-type]


# --- without a container engine ----------------------------------------------------------------


def test_is_a_container_engine(tmp_path: Path) -> None:
    engine: ContainerEngine = fake_engine(tmp_path, ["podman-compose"])
    assert engine.describe() == f"podman-compose -p stack -f {tmp_path / 'compose.yml'}"


@pytest.mark.parametrize(
    ("compose", "container"),
    [
        (["podman-compose"], ("podman",)),
        (["/usr/local/bin/podman-compose"], ("podman",)),
        (["docker", "compose"], ("docker",)),
        (["docker-compose"], ("docker",)),
        (["/usr/bin/docker", "compose"], ("docker",)),
    ],
)
def test_container_cmd_for(compose: list[str], container: tuple[str, ...]) -> None:
    assert container_cmd_for(compose) == container


def test_override_is_passed_only_while_it_exists(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, ["docker", "compose"], compose_files=[tmp_path / "a.yml", tmp_path / "b.yml"])
    assert engine.compose_argv() == [
        "docker",
        "compose",
        "-p",
        "stack",
        "-f",
        str(tmp_path / "a.yml"),
        "-f",
        str(tmp_path / "b.yml"),
    ]
    (tmp_path / "override.yml").write_text("services: {}\n")
    assert engine.describe().endswith(f"-f {tmp_path / 'b.yml'} -f {tmp_path / 'override.yml'}")


async def test_docker_flavour_through_fake_clis(tmp_path: Path) -> None:
    """docker compose's version, docker's ps and inspect (the fixture documents), healthchecks left to docker."""
    bin_dir = tmp_path / "bin"
    fake_tool(
        bin_dir,
        "docker",
        f"""case "$1 $2" in
  "compose version") echo "Docker Compose version v2.29.1" ;;
  "ps -a") echo 5f0c6a8e1b7d; echo a1b2c3d4e5f6 ;;
  "container inspect") cat {FIXTURES / "docker-27-inspect.json"} ;;
  "compose -p") echo "$@" > {tmp_path / "args"}; echo recreated; exit 3 ;;
  *) echo "unexpected: $*" >&2; exit 99 ;;
esac""",
    )
    engine = fake_engine(tmp_path, ["docker", "compose"])
    assert await engine.problems([GPU0, "no-cdi-for-docker"]) == []
    views = await engine.containers()
    assert [(v.service, v.device_ids) for v in views] == [("embed", ("all",)), ("llm", (GPU1,))]
    await engine.run_healthcheck(views[1].id)  # docker schedules its own: nothing is run
    assert await engine.device_env() == {}
    result = await engine.recreate("llm")
    assert (result.returncode, result.output_tail) == (3, "recreated\n")
    assert (tmp_path / "args").read_text().split() == [*result.argv[1:]]
    assert result.argv[-5:] == ("up", "-d", "--force-recreate", "--no-deps", "llm")
    assert await engine.project_services() == {"llm": (), "ui": ("llm",)}


async def test_old_docker_compose_and_silent_daemon(tmp_path: Path) -> None:
    fake_tool(tmp_path / "bin", "docker-compose", 'echo "docker-compose version 1.29.2, build 5becea4c"')
    fake_tool(
        tmp_path / "bin",
        "docker",
        'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock" >&2; exit 1',
    )
    problems = await fake_engine(tmp_path, ["docker-compose"]).problems([])
    assert problems == [
        "docker does not answer: `docker ps` exited 1: Cannot connect to the Docker daemon at "
        "unix:///var/run/docker.sock; is the docker daemon running and may this user talk to it?",
        "docker-compose 1.29.2 is too old: Docker Compose v2 is needed; install the compose plugin "
        "(https://docs.docker.com/compose/install/) and set GPUPLANE_COMPOSE_CMD='docker compose'",
    ]


async def test_missing_commands_raise_engine_unavailable(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, ["/nowhere/podman-compose"], container_cmd=["no-such-podman"])
    with pytest.raises(EngineUnavailable, match=r"^no-such-podman not found \(GPUPLANE_CONTAINER_CMD=no-such-podman\)"):
        await engine.containers()
    with pytest.raises(EngineUnavailable) as caught:
        await engine.recreate("llm")
    assert str(caught.value) == (
        "/nowhere/podman-compose not found (GPUPLANE_COMPOSE_CMD=/nowhere/podman-compose): "
        "install it with `pip install 'podman-compose>=1.6'`"
    )
    assert await engine.logs_tail("abc") == ""
    assert await engine.problems([]) == [
        "no-such-podman not found (GPUPLANE_CONTAINER_CMD=no-such-podman): install it or fix the setting",
        str(caught.value),
    ]


def test_bare_compose_command_is_found_next_to_the_interpreter(tmp_path: Path) -> None:
    # pip puts podman-compose in the virtual environment's bin, which need not be on PATH.
    engine = fake_engine(tmp_path, ["podman-compose"], env={"PATH": str(tmp_path / "empty")})
    assert engine._resolve(engine.compose_cmd) == str(Path(sys.executable).parent / "podman-compose")


async def test_hung_command_times_out_and_is_killed(tmp_path: Path) -> None:
    # What the command started is ended too, as podman-compose's own podman processes would be.
    fake_tool(tmp_path / "bin", "podman", f"sleep 30 & echo $! $$ > {tmp_path / 'pids'}; exec sleep 30")
    engine = fake_engine(tmp_path, ["podman-compose"], command_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match=r"podman ps -a .* did not finish within 0.5 s"):
        await engine.containers()
    assert time.monotonic() - started < 5
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    for _ in range(100):  # SIGKILL is delivered asynchronously
        if not pids_alive(pids):
            break
        await asyncio.sleep(0.05)
    assert pids_alive(pids) == []


async def test_engine_errors(tmp_path: Path) -> None:
    fake_tool(tmp_path / "bin", "podman", 'echo "Error: database is locked" >&2; exit 125')
    engine = fake_engine(tmp_path, ["podman-compose"])
    with pytest.raises(EngineUnavailable, match=r"`podman ps` exited 125: Error: database is locked"):
        await engine.containers()
    with pytest.raises(InvalidName, match="compose service '--all' is not a valid name"):
        await engine.recreate("--all")


BAD_NAMES = ["ai*star", "../x", "-x", "a b", "$(reboot)", "x" * 129, ""]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_compose_file_with_a_bad_service_name_is_refused_naming_file_and_service(
    tmp_path: Path, name: str
) -> None:
    calls = tmp_path / "calls"
    for tool in ("podman", "podman-compose"):
        fake_tool(tmp_path / "bin", tool, f'echo "$0 $*" >> {calls}; echo "podman-compose version 1.6.0"')
    compose_file = tmp_path / "compose.yml"
    compose_file.write_text(yaml.safe_dump({"services": {"ai-llm": {"image": "x"}, name: {"image": "y"}}}))
    engine = fake_engine(tmp_path, ["podman-compose"])
    said = f"the compose file {compose_file}: service {name!r} is not a valid name: use a letter or digit"

    with pytest.raises(ConfigError, match=re.escape(said)):
        load_compose_documents([compose_file])
    with pytest.raises(ConfigError, match=re.escape(said)):
        await engine.project_services()
    [problem] = await engine.problems([])
    assert problem.startswith(said)
    assert "up" not in (calls.read_text() if calls.exists() else "")


@pytest.mark.parametrize("name", ["ai-llm", "a.b_c", "1", "A" * 128])
def test_service_names_within_the_rule_are_accepted(tmp_path: Path, name: str) -> None:
    compose_file = tmp_path / "compose.yml"
    compose_file.write_text(f"services:\n  {name}: {{image: x}}\n")
    [doc] = load_compose_documents([compose_file])
    assert [str(n) for n in doc["services"]] == [name]


@pytest.mark.parametrize(
    ("project", "given", "said"),
    [
        ("ai*star", None, "the compose project name 'ai*star' is not a valid name: use a letter or digit"),
        ("x" * 129, None, f"the compose project name '{'x' * 129}' is not a valid name"),
        ("a*b", "GPUPLANE_COMPOSE_PROJECT 'a*b' is not a valid name", "GPUPLANE_COMPOSE_PROJECT 'a*b' is not"),
    ],
)
async def test_an_unusable_project_name_is_a_problem_and_never_reaches_a_command(
    tmp_path: Path, project: str, given: str | None, said: str
) -> None:
    calls = tmp_path / "calls"
    for tool in ("podman", "podman-compose"):
        fake_tool(tmp_path / "bin", tool, f'echo "$0 $*" >> {calls}')
    engine = fake_engine(tmp_path, ["podman-compose"], project=project, project_problem=given)

    [problem] = await engine.problems(["0"])
    assert problem.startswith(said)
    for command in (engine.recreate("llm"), engine.containers()):
        with pytest.raises(ConfigError, match=re.escape(said)):
            await command
    with pytest.raises(ConfigError, match=re.escape(said)):
        engine.compose_argv()
    assert not calls.exists()
    assert engine.describe().startswith("podman-compose -p ")  # the status still shows what would run


# --- real podman and podman-compose (tests/podman.py) ------------------------------------------


async def test_problems_empty_in_sandbox(podman_engine: ComposeEngine) -> None:
    assert await podman_engine.problems([GPU0, GPU1, "0", "1"]) == []
    assert await podman_engine.project_services() == {"llm": (), "proxy": ("llm",), "vision": (), "crasher": ()}


async def test_problems_say_what_is_missing(
    podman_sandbox: PodmanSandbox, compose_project: ComposeProject, tmp_path: Path
) -> None:
    def problems_of(**overrides: object) -> ComposeEngine:
        return engine_for(podman_sandbox, compose_project, **overrides)

    # Other specs on this machine (a GPU's, the demo's) may define more names: the test's must be listed.
    [unknown] = await problems_of().problems(["GPU-ffff"])
    assert unknown.startswith("the CDI spec defines no device GPU-ffff (it defines: ")
    assert all(name in unknown for name in SPEC_NAMES.split(", "))
    assert unknown.endswith(
        "; regenerate it with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` or check GPUPLANE_DEVICE_IDS"
    )
    assert await problems_of(cdi_dirs=[tmp_path / "etc-cdi"]).problems([GPU0]) == [
        f"no CDI spec for nvidia.com/gpu in {tmp_path / 'etc-cdi'}: generate one with "
        "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"
    ]
    assert await problems_of(compose_cmd=["no-such-compose"]).problems([]) == [
        "no-such-compose not found (GPUPLANE_COMPOSE_CMD=no-such-compose): install it or fix the setting"
    ]
    missing_file = tmp_path / "nope.yml"
    assert await problems_of(compose_files=[compose_project.compose_file, missing_file]).problems([]) == [
        f"the compose file {missing_file} does not exist; check GPUPLANE_COMPOSE_FILES"
    ]
    fake_tool(tmp_path / "old", "podman-compose", 'echo "podman-compose version 1.5.0"; echo "podman version 4.3.1"')
    env = {**podman_sandbox.env, "PATH": f"{tmp_path / 'old'}:{podman_sandbox.env['PATH']}"}
    assert await problems_of(env=env).problems([]) == [
        "podman-compose 1.5.0 is too old: 1.6 or newer is needed to give containers GPUs through CDI; "
        "upgrade it with `pip install 'podman-compose>=1.6'`"
    ]


async def test_recreate_gives_the_service_its_gpus(
    podman_sandbox: PodmanSandbox, compose_project: ComposeProject, podman_engine: ComposeEngine
) -> None:
    before = podman_sandbox.container_ids(compose_project)
    target = ServiceTarget.of("llm", (GPU1,), {"VRAM_BUDGET_GB": "3.5", "GPUPLANE_ASSIGNED_GPUS": GPU1})
    podman_sandbox.write_override(compose_project, {"llm": target})

    result = await podman_engine.recreate("llm")

    assert result.returncode == 0, result.output_tail
    assert result.argv[-7:] == (
        "-f",
        str(compose_project.override_file),
        "up",
        "-d",
        "--force-recreate",
        "--no-deps",
        "llm",
    )
    after = podman_sandbox.container_ids(compose_project)
    # Documented podman-compose 1.6 behaviour: --no-deps still recreates the running dependents (proxy).
    assert {s for s in before if before[s] != after[s]} == {"llm", "proxy"}
    views = {v.service: v for v in await podman_engine.containers()}
    assert set(views) == {"llm", "proxy", "vision", "crasher"}
    llm = views["llm"]
    assert (llm.id, llm.running, llm.device_ids) == (after["llm"], True, (GPU1,))
    assert llm.env["NVIDIA_VISIBLE_DEVICES"] == "1"  # what the CDI spec injected
    assert (llm.env["VRAM_BUDGET_GB"], llm.labels[TARGET_LABEL]) == ("3.5", target.digest)
    assert podman_sandbox.printenv(llm.id, "NVIDIA_VISIBLE_DEVICES") == "1"  # the main process really has it
    assert (views["proxy"].running, views["proxy"].device_ids) == (True, ())
    assert (views["crasher"].running, views["crasher"].exit_code) == (False, 3)
    assert (await podman_engine.device_env())[GPU1] == {"NVIDIA_VISIBLE_DEVICES": "1"}


async def test_recreate_a_service_without_dependents_by_index(
    podman_sandbox: PodmanSandbox, compose_project: ComposeProject, podman_engine: ComposeEngine
) -> None:
    before = podman_sandbox.container_ids(compose_project)
    podman_sandbox.write_override(compose_project, {"vision": ServiceTarget.of("vision", ("0",))})
    result = await podman_engine.recreate("vision")
    assert result.returncode == 0, result.output_tail
    after = podman_sandbox.container_ids(compose_project)
    assert {s for s in before if before[s] != after[s]} == {"vision"}
    vision = next(v for v in await podman_engine.containers() if v.service == "vision")
    assert (vision.device_ids, vision.env["NVIDIA_VISIBLE_DEVICES"]) == (("0",), "0")


async def test_recreate_with_a_device_podman_cannot_resolve(
    podman_sandbox: PodmanSandbox, compose_project: ComposeProject, podman_engine: ComposeEngine
) -> None:
    """podman-compose removes the old container first: the service is left with a created, never started one."""
    podman_sandbox.write_override(compose_project, {"llm": ServiceTarget.of("llm", ("GPU-nope",))})
    result = await podman_engine.recreate("llm")
    assert result.returncode != 0
    assert "unresolvable CDI devices nvidia.com/gpu=GPU-nope" in result.output_tail
    views = {v.service: v for v in await podman_engine.containers()}
    assert (views["llm"].status, views["llm"].running, views["llm"].exit_code) == ("created", False, None)
    assert views["llm"].device_ids == ("GPU-nope",)
    assert views["proxy"].running  # its dependent was recreated and started all the same


async def test_run_healthcheck(podman_engine: ComposeEngine, podman_sandbox: PodmanSandbox) -> None:
    views = {v.service: v for v in await podman_engine.containers()}
    llm = views["llm"]
    assert llm.health == "starting"  # podman has no systemd timer here to run it
    await podman_engine.run_healthcheck(llm.id)
    assert await health_of(podman_engine, "llm") == "healthy"
    podman_sandbox.podman("exec", llm.id, "rm", "/tmp/ready")
    await podman_engine.run_healthcheck(llm.id)
    assert await health_of(podman_engine, "llm") == "unhealthy"
    await podman_engine.run_healthcheck(views["vision"].id)  # no healthcheck: nothing to run, no error
    await podman_engine.run_healthcheck("no-such-container")
    assert await health_of(podman_engine, "vision") is None


async def health_of(engine: ComposeEngine, service: str) -> str | None:
    return next(v.health for v in await engine.containers() if v.service == service)


async def test_logs_tail(podman_engine: ComposeEngine) -> None:
    views = {v.service: v for v in await podman_engine.containers()}
    crasher = views["crasher"]
    assert set((await podman_engine.logs_tail(crasher.id)).splitlines()) == {"crasher starting", "crasher gives up"}
    assert len((await podman_engine.logs_tail(crasher.id, lines=1)).splitlines()) == 1
    assert await podman_engine.logs_tail(views["vision"].id) == "vision started"
    assert await podman_engine.logs_tail("no-such-container") == ""


async def test_containers_of_an_empty_project(podman_sandbox: PodmanSandbox, compose_project: ComposeProject) -> None:
    assert await engine_for(podman_sandbox, compose_project, project="gppnothing").containers() == []


async def test_no_compose_files_is_the_one_problem_named(tmp_path: Path) -> None:
    engine = ComposeEngine(["podman-compose"], [], tmp_path / "override.yml", "unset")
    assert await engine.problems(["0"]) == [
        "no compose project to apply to: set GPUPLANE_COMPOSE_FILES to your AI stack's compose file(s)"
    ]
