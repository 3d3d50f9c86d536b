"""CDI specs: which ``nvidia.com/gpu`` devices podman can inject, read the way podman reads them.

podman 4 reads ``*.json`` and ``*.yaml`` files directly in ``/etc/cdi`` and ``/var/run/cdi`` (no
subfolders); a later folder overrides an earlier one, and a device defined twice in one folder is a
conflict that podman refuses to inject. A spec that cannot be read or parsed is skipped by podman;
here it is reported as a ``CdiSpecError`` naming the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from shared.errors import ConfigError

NVIDIA_GPU_KIND = "nvidia.com/gpu"
DEFAULT_CDI_DIRS: tuple[Path, ...] = (Path("/etc/cdi"), Path("/var/run/cdi"))
SPEC_SUFFIXES = (".json", ".yaml")
GENERATE_HINT = "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"

_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


class CdiSpecError(ConfigError):
    """A CDI spec file that cannot be read or is not a valid spec; ``path`` names it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"CDI spec {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class CdiSpec:
    """One spec file: its kind, and each device's environment edits (the spec-wide ones included)."""

    path: Path
    kind: str
    devices: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class CdiDevice:
    name: str
    env: Mapping[str, str]
    spec: Path


@dataclass(frozen=True)
class CdiScan:
    """The devices of one kind that podman would resolve, and what is wrong with the specs."""

    dirs: tuple[Path, ...]
    kind: str
    devices: Mapping[str, CdiDevice] = field(default_factory=dict)
    """Resolvable devices by name."""
    spec_files: tuple[Path, ...] = ()
    """Readable spec files of ``kind``."""
    errors: tuple[CdiSpecError, ...] = ()
    conflicts: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)
    """Device names defined by several specs in one folder (podman will not inject them)."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.devices)

    def problems(self, device_ids: Collection[str]) -> list[str]:
        """What stops ``--device nvidia.com/gpu=ID`` for each of ``device_ids``, in words a user can act on."""
        if not device_ids:
            return []
        where = " or ".join(str(d) for d in self.dirs)
        broken = [str(e) for e in self.errors]
        if not self.spec_files:
            return [*broken, f"no CDI spec for {self.kind} in {where}: generate one with `{GENERATE_HINT}`"]
        problems: list[str] = []
        for device_id in device_ids:
            if device_id in self.conflicts:
                files = ", ".join(str(p) for p in self.conflicts[device_id])
                problems.append(
                    f"the CDI device {self.kind}={device_id} is defined in several specs of one folder ({files}): "
                    "podman refuses it; remove all but one"
                )
            elif device_id not in self.devices:
                problems.append(
                    f"the CDI spec defines no device {device_id} (it defines: {', '.join(self.names) or 'none'}); "
                    f"regenerate it with `{GENERATE_HINT}` or check GPUPLANE_DEVICE_IDS"
                )
        return [*broken, *problems] if problems else []


def load_spec(path: Path) -> CdiSpec:
    """Read and check one spec file (YAML or JSON). Raises ``CdiSpecError`` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CdiSpecError(path, f"cannot be read ({exc})") from exc
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        language = "JSON" if path.suffix == ".json" else "YAML"
        raise CdiSpecError(path, f"is not valid {language} ({_first_line(exc)})") from exc
    return parse_spec(path, doc)


def parse_spec(path: Path, doc: object) -> CdiSpec:
    """Check a parsed spec document. Raises ``CdiSpecError``."""
    if not isinstance(doc, Mapping):
        raise CdiSpecError(path, "is not a mapping with cdiVersion, kind and devices")
    if not doc.get("cdiVersion"):
        raise CdiSpecError(path, "has no cdiVersion")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise CdiSpecError(path, f"has an invalid kind {kind!r} (expected vendor/class, like {NVIDIA_GPU_KIND})")
    shared_env = _env_edits(path, doc.get("containerEdits"), "containerEdits")
    raw_devices = doc.get("devices")
    if not isinstance(raw_devices, list) or not raw_devices:
        raise CdiSpecError(path, "has no devices list")
    devices: dict[str, dict[str, str]] = {}
    for i, device in enumerate(raw_devices):
        if not isinstance(device, Mapping):
            raise CdiSpecError(path, f"devices[{i}] is not a mapping")
        name = device.get("name")
        if isinstance(name, int | float):
            raise CdiSpecError(path, f'devices[{i}] has the number {name} as its name; quote it: name: "{name}"')
        if not isinstance(name, str) or not _DEVICE_NAME.match(name):
            raise CdiSpecError(path, f"devices[{i}] has an invalid name {name!r}")
        if name in devices:
            raise CdiSpecError(path, f"defines device {name} twice")
        devices[name] = {**shared_env, **_env_edits(path, device.get("containerEdits"), f"devices[{i}]")}
    return CdiSpec(path, kind, devices)


def _env_edits(path: Path, edits: object, where: str) -> dict[str, str]:
    if edits is None:
        return {}
    if not isinstance(edits, Mapping):
        raise CdiSpecError(path, f"{where}.containerEdits is not a mapping")
    env: dict[str, str] = {}
    for entry in edits.get("env") or ():
        name, sep, value = str(entry).partition("=")
        if not name or not sep:
            raise CdiSpecError(path, f"{where} has an env entry {entry!r} that is not NAME=VALUE")
        env[name] = value
    return env


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def spec_files(dirs: Iterable[Path]) -> tuple[list[Path], list[CdiSpecError]]:
    """The candidate spec files of each folder, sorted by name; unreadable folders as errors."""
    files: list[Path] = []
    errors: list[CdiSpecError] = []
    for directory in dirs:
        try:
            entries = sorted(directory.iterdir())
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(CdiSpecError(directory, f"cannot be listed ({exc})"))
            continue
        files.extend(p for p in entries if p.suffix in SPEC_SUFFIXES and p.is_file())
    return files, errors


def scan(dirs: Sequence[Path] = DEFAULT_CDI_DIRS, kind: str = NVIDIA_GPU_KIND) -> CdiScan:
    """The devices of ``kind`` defined in ``dirs`` (later folders win), with the problems found on the way."""
    files, errors = spec_files(dirs)
    devices: dict[str, CdiDevice] = {}
    conflicts: dict[str, tuple[Path, ...]] = {}
    kind_files: list[Path] = []
    for directory in dirs:
        in_folder: dict[str, CdiDevice] = {}
        for path in (f for f in files if f.parent == directory):
            try:
                spec = load_spec(path)
            except CdiSpecError as exc:
                errors.append(exc)
                continue
            if spec.kind != kind:
                continue
            kind_files.append(path)
            for name, env in spec.devices.items():
                if name in in_folder:
                    conflicts[name] = tuple(dict.fromkeys((*conflicts.get(name, ()), in_folder[name].spec, path)))
                in_folder[name] = CdiDevice(name, env, path)
        devices.update(in_folder)
    # As podman's CDI cache does: a conflict anywhere makes the name unresolvable, even if a later folder defines it.
    for name in conflicts:
        devices.pop(name, None)
    return CdiScan(tuple(dirs), kind, devices, tuple(kind_files), tuple(errors), conflicts)
