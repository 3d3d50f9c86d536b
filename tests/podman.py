"""Real podman for tests, kept apart from the machine's own podman state.

``PodmanSandbox`` writes a private ``containers.conf`` (runc, cgroupfs, file events; its own network
and temporary folders) and ``storage.conf`` (vfs) in a temporary folder, selected for every command
through ``CONTAINERS_CONF`` and ``CONTAINERS_STORAGE_CONF`` in ``env``. Images cannot be pulled, so
it imports a busybox image made from the static ``/bin/busybox``. A CDI spec in ``/var/run/cdi``
(the only place podman 4.3 reads besides ``/etc/cdi``) names fake GPUs by index and by the uuids of
``tests.builders.make_gpu`` (four GPUs), so ``--device nvidia.com/gpu=...`` works without a GPU;
sandboxes of test sessions running side by side share it, and the last one to close removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from services.orchestrator.core.model import ServiceTarget
from services.orchestrator.core.override import render_override
from tests.builders import make_gpu

BUSYBOX = Path("/bin/busybox")
BUSYBOX_IMAGE = "localhost/gpuplane-busybox:test"
CDI_SPEC = Path("/var/run/cdi/gpuplane-test.yaml")
CDI_HOLDERS = Path("/run/gpuplane-test-cdi")
"""One file per sandbox using the spec (``<pid>-<random>``), under ``CDI_LOCK``."""
CDI_LOCK = Path("/run/gpuplane-test-cdi.lock")
APPLETS = ("sh", "sleep", "env", "cat", "echo", "printf", "true", "false", "test", "touch", "rm", "ls", "kill", "wc")
RUN_FOREVER = "trap 'exit 0' TERM; sleep 3600 & wait"
"""A main process that stops at once on SIGTERM (a bare ``sleep`` as PID 1 ignores it: 10 s per stop)."""

CONTAINERS_CONF = """\
[containers]
default_ulimits = []
pids_limit = 0

[network]
network_config_dir = "{root}/networks"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{root}/tmp"
"""

STORAGE_CONF = """\
[storage]
driver = "vfs"
graphroot = "{root}/graph"
runroot = "{root}/run"
"""


def compose_executable() -> Path:
    """podman-compose as pip installs it next to the interpreter running the tests, else from PATH."""
    beside = Path(sys.executable).parent / "podman-compose"
    found = shutil.which("podman-compose")
    return Path(found) if found and not beside.exists() else beside


def missing() -> str | None:
    """Why real podman tests cannot run here, or ``None``."""
    for tool, package in (("podman", "podman"), ("runc", "runc")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not BUSYBOX.is_file() or not _is_static(BUSYBOX):
        return f"{BUSYBOX} is missing or not statically linked (apt-get install busybox-static)"
    if not compose_executable().exists() and shutil.which("podman-compose") is None:
        return "podman-compose is not installed (pip install 'podman-compose>=1.6')"
    cdi_dir = CDI_SPEC.parent
    if not os.access(cdi_dir if cdi_dir.exists() else cdi_dir.parent, os.W_OK):
        return f"{CDI_SPEC.parent} is not writable (the podman tests run as root)"
    return None


def _is_static(path: Path) -> bool:
    """An ELF executable without a program interpreter (PT_INTERP) needs no shared libraries."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


@contextlib.contextmanager
def _cdi_lock() -> Iterator[None]:
    with CDI_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ComposeProject:
    """A compose project written by ``PodmanSandbox.write_project``."""

    name: str
    directory: Path
    compose_file: Path
    override_file: Path
    services: tuple[str, ...]


class PodmanSandbox:
    """Private podman configuration and storage, the busybox image and the test CDI spec."""

    def __init__(self, root: Path | None = None, gpu_count: int = 4) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="gpuplane-podman-"))
        self.gpu_count = gpu_count
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
            "PATH": os.pathsep.join([str(compose_executable().parent), os.environ.get("PATH", os.defpath)]),
        }
        self._holding = False
        self._holder = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Write the configuration, import the image, install the CDI spec; fail loudly if podman cannot run."""
        for sub in ("networks", "tmp", "graph", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "containers.conf").write_text(CONTAINERS_CONF.format(root=self.root))
        (self.root / "storage.conf").write_text(STORAGE_CONF.format(root=self.root))
        self.build_image()
        self.install_cdi_spec()
        smoke = self.podman("run", "--rm", "--device", "nvidia.com/gpu=0", BUSYBOX_IMAGE, "true", check=False)
        if smoke.returncode != 0:
            raise RuntimeError(f"podman cannot run a container here: {smoke.stderr.strip()}")

    def close(self) -> None:
        """Remove every container, pod and network of the private storage, the CDI spec and the folder."""
        self.podman("rm", "-af", "-t", "0", check=False)
        self.podman("pod", "rm", "-af", check=False)
        self.podman("network", "prune", "-f", check=False)
        self.remove_cdi_spec()
        shutil.rmtree(self.root, ignore_errors=True)

    def build_image(self) -> None:
        """``localhost/gpuplane-busybox:test``: /bin/busybox and links for the applets tests use."""
        if self.podman("image", "exists", BUSYBOX_IMAGE, check=False).returncode == 0:
            return
        applets = set(
            subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
        )
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for folder in ("bin", "etc", "tmp", "proc", "sys", "dev"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
                tar.addfile(info)
            tar.add(str(BUSYBOX), "bin/busybox")
            for applet in APPLETS:
                if applet in applets:
                    link = tarfile.TarInfo(f"bin/{applet}")
                    link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
                    tar.addfile(link)
        archive = self.root / "busybox.tar"
        archive.write_bytes(buffer.getvalue())
        self.podman("import", str(archive), BUSYBOX_IMAGE)
        archive.unlink()

    def cdi_spec(self) -> dict[str, object]:
        devices = []
        for index in range(self.gpu_count):
            edits = {"env": [f"NVIDIA_VISIBLE_DEVICES={index}"]}
            devices.append({"name": str(index), "containerEdits": edits})
            devices.append({"name": make_gpu(index).uuid, "containerEdits": edits})
        return {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": devices}

    def install_cdi_spec(self) -> None:
        """Write the spec unless it is there already, and hold it (test sessions may run side by side)."""
        text = yaml.safe_dump(self.cdi_spec(), sort_keys=False)
        with _cdi_lock():
            CDI_HOLDERS.mkdir(parents=True, exist_ok=True)
            (CDI_HOLDERS / self._holder).touch()
            self._holding = True
            if CDI_SPEC.exists() and CDI_SPEC.read_text() == text:
                return
            CDI_SPEC.parent.mkdir(parents=True, exist_ok=True)
            partial = CDI_SPEC.with_suffix(".tmp")  # podman reads only *.yaml and *.json
            partial.write_text(text)
            partial.replace(CDI_SPEC)

    def remove_cdi_spec(self) -> None:
        """Let go of the spec; the last session holding it (whose process lives) removes it."""
        if not self._holding:
            return
        with _cdi_lock():
            (CDI_HOLDERS / self._holder).unlink(missing_ok=True)
            self._holding = False
            holders = [h for h in CDI_HOLDERS.iterdir() if _process_alive(int(h.name.split("-")[0]))]
            if not holders:
                CDI_SPEC.unlink(missing_ok=True)

    # --- commands ------------------------------------------------------------------------------

    def podman(self, *args: str, check: bool = True, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """``podman ARGS`` in the sandbox; raises ``RuntimeError`` with its stderr when ``check`` and it fails."""
        return self._run(["podman", *args], check, timeout_s)

    def compose(self, project: ComposeProject, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``podman-compose -p NAME -f compose.yml ARGS`` (without the override)."""
        argv = [str(compose_executable()), "-p", project.name, "-f", str(project.compose_file), *args]
        return self._run(argv, check, 120)

    def _run(self, argv: list[str], check: bool, timeout_s: float) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    # --- compose projects ----------------------------------------------------------------------

    def write_project(self, directory: Path, *, failing: bool = True, name: str | None = None) -> ComposeProject:
        """A compose project of busybox services in ``directory``.

        ``llm`` has a healthcheck (``/tmp/ready`` exists), ``proxy`` depends on ``llm``, ``vision`` stands
        alone, and (``failing``) ``crasher`` prints a line and exits 3 at start.
        """
        name = name or f"gpp{uuid.uuid4().hex[:10]}"
        directory.mkdir(parents=True, exist_ok=True)
        services: dict[str, dict[str, object]] = {
            "llm": {
                **self._service("llm", "touch /tmp/ready; "),
                "healthcheck": {"test": ["CMD", "test", "-e", "/tmp/ready"], "interval": "1h", "retries": 1},
            },
            "proxy": {**self._service("proxy"), "depends_on": ["llm"]},
            "vision": self._service("vision"),
        }
        if failing:
            services["crasher"] = {
                "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", "echo crasher starting; echo crasher gives up >&2; exit 3"],
            }
        compose_file = directory / "compose.yml"
        compose_file.write_text(yaml.safe_dump({"name": name, "services": services}, sort_keys=False))
        return ComposeProject(name, directory, compose_file, directory / "override.yml", tuple(services))

    @staticmethod
    def _service(name: str, before: str = "") -> dict[str, object]:
        return {"image": BUSYBOX_IMAGE, "command": ["sh", "-c", f"{before}echo {name} started; {RUN_FOREVER}"]}

    @staticmethod
    def write_override(project: ComposeProject, targets: Mapping[str, ServiceTarget]) -> None:
        """The override file the orchestrator would write for ``targets``."""
        project.override_file.write_text(render_override(targets))

    def up(self, project: ComposeProject) -> None:
        self.compose(project, "up", "-d")

    def remove_project(self, project: ComposeProject) -> None:
        """Remove the project's containers, pod and network (whatever state they are in)."""
        label = f"label=com.docker.compose.project={project.name}"
        ids = self.podman("ps", "-aq", "--filter", label, check=False).stdout.split()
        if ids:
            self.podman("rm", "-f", "-t", "0", *ids, check=False)
        self.podman("pod", "rm", "-f", "--ignore", f"pod_{project.name}", check=False)
        for network in self.podman("network", "ls", "-q", "--filter", label, check=False).stdout.split():
            self.podman("network", "rm", "-f", network, check=False)

    def container_ids(self, project: ComposeProject) -> dict[str, str]:
        """Each service's container id (one container per service)."""
        out = self.podman(
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={project.name}",
            "--format",
            '{{.ID}} {{index .Labels "com.docker.compose.service"}}',
        ).stdout
        return {service: cid for cid, service in (line.split() for line in out.splitlines() if line.strip())}

    def process_env(self, container: str) -> dict[str, str]:
        """The environment of the container's main process (``/proc/1/environ``).

        Not ``podman exec printenv``: an exec'd process gets the configured environment only, without
        what CDI injected into the container's OCI spec (and busybox-static has no printenv).
        """
        raw = self.podman("exec", container, "cat", "/proc/1/environ").stdout
        return dict(entry.partition("=")[::2] for entry in raw.split("\0") if entry)

    def printenv(self, container: str, name: str) -> str | None:
        """One variable of the container's main process, ``None`` when unset."""
        return self.process_env(container).get(name)
