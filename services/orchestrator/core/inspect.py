"""Reading what podman and docker print: container inspect documents, compose versions, compose files.

Pure functions over already-read text and parsed documents; the engine does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from services.orchestrator.core.model import ContainerView
from shared.errors import ConfigError

CDI_GPU_PREFIX = "nvidia.com/gpu="
"""How podman names a CDI GPU device in ``--device`` and ``HostConfig.Devices``."""

SERVICE_LABELS = ("com.docker.compose.service", "io.podman.compose.service")
PROJECT_LABEL = "com.docker.compose.project"
"""Set by docker compose and by podman-compose alike; what the engine filters containers on."""

_NEVER_RAN = frozenset({"created", "configured", "initialized"})
_DEVICE_FLAGS = ("--device", "--device=")
_TIMESTAMP = re.compile(
    r"^(?P<base>\d{4}-\d{2}-\d{2})[T ](?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?"
    r"\s*(?P<tz>Z|[+-]\d{2}:?\d{2})?(?:\s+[A-Z]{2,5})?$"
)
_VERSION = r"v?(\d+(?:\.\d+)+)"


def parse_inspect(doc: Mapping[str, Any]) -> ContainerView:
    """One element of ``podman inspect`` or ``docker inspect`` output as a ``ContainerView``."""
    state = _mapping(doc.get("State"))
    config = _mapping(doc.get("Config"))
    host = _mapping(doc.get("HostConfig"))
    labels = {str(k): str(v) for k, v in _mapping(config.get("Labels")).items()}
    status = str(state.get("Status") or "")
    running = bool(state.get("Running", status == "running"))
    exit_code = state.get("ExitCode")
    return ContainerView(
        id=str(doc.get("Id") or doc.get("ID") or ""),
        name=str(doc.get("Name") or "").lstrip("/"),
        service=next((labels[k] for k in SERVICE_LABELS if labels.get(k)), ""),
        status=status,
        running=running,
        restarting=bool(state.get("Restarting", False)),
        restart_count=int(doc.get("RestartCount") or 0),
        exit_code=int(exit_code) if isinstance(exit_code, int) and not running and status not in _NEVER_RAN else None,
        health=_health(state, config),
        device_ids=_device_ids(doc, config, host),
        env=parse_env(config.get("Env") or ()),
        labels=labels,
        started_at=parse_timestamp(state.get("StartedAt")),
        created_at=parse_timestamp(doc.get("Created")),
        ports=parse_ports(_mapping(doc.get("NetworkSettings")).get("Ports")),
        addresses=_addresses(_mapping(doc.get("NetworkSettings"))),
    )


def parse_ports(value: object) -> dict[int, tuple[str, int]]:
    """``NetworkSettings.Ports`` (``{"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18481"}]}``) as
    container TCP port -> (host address, host port); the first binding of each port."""
    ports: dict[int, tuple[str, int]] = {}
    for key, bindings in _mapping(value).items():
        number, _, protocol = str(key).partition("/")
        if protocol not in ("", "tcp") or not number.isdigit() or not isinstance(bindings, list):
            continue
        for binding in bindings:
            host_port = str(_mapping(binding).get("HostPort") or "")
            if host_port.isdigit():
                ports[int(number)] = (str(_mapping(binding).get("HostIp") or ""), int(host_port))
                break
    return ports


def _addresses(network: Mapping[str, Any]) -> tuple[str, ...]:
    found = [str(network.get("IPAddress") or "")]
    found += [str(_mapping(n).get("IPAddress") or "") for n in _mapping(network.get("Networks")).values()]
    return tuple(dict.fromkeys(a for a in found if a))


def parse_env(entries: Iterable[str]) -> dict[str, str]:
    """``["K=V", ...]`` as a dict; an entry without ``=`` has the empty value; the last of a name wins."""
    env: dict[str, str] = {}
    for entry in entries:
        name, _, value = str(entry).partition("=")
        if name:
            env[name] = value
    return env


def parse_timestamp(value: object) -> datetime | None:
    """An engine's timestamp as an aware datetime; ``None`` for Go's zero time or anything unreadable.

    Accepts RFC 3339 with nanoseconds (``2026-11-23T14:13:40.230121498Z``) and Go's default
    format (``2026-11-23 14:13:40.230121498 +0000 UTC``); a time without an offset is UTC.
    """
    if not isinstance(value, str):
        return None
    match = _TIMESTAMP.match(value.strip())
    if match is None or match["base"].startswith("0001-"):
        return None
    frac = (match["frac"] or "")[:6].ljust(6, "0")
    try:
        naive = datetime.fromisoformat(f"{match['base']}T{match['time']}.{frac}")
    except ValueError:
        return None
    return naive.replace(tzinfo=_zone(match["tz"]))


def _zone(text: str | None) -> timezone:
    if not text or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _health(state: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    # podman shows a Health dict with an empty status when there is no healthcheck; podman 3 says "Healthcheck".
    health = _mapping(state.get("Health")) or _mapping(state.get("Healthcheck"))
    status = str(health.get("Status") or "")
    if status and status != "none":
        return status
    check = _mapping(config.get("Healthcheck"))
    test = check.get("Test")
    if check and test and list(test)[:1] != ["NONE"]:
        return "starting"
    return None


def _device_ids(doc: Mapping[str, Any], config: Mapping[str, Any], host: Mapping[str, Any]) -> tuple[str, ...]:
    ids: list[str] = []
    image = str(doc.get("ImageName") or config.get("Image") or "")
    ids.extend(_cdi_ids_from_argv(config.get("CreateCommand") or (), image))
    for device in host.get("Devices") or ():
        path = str(_mapping(device).get("PathOnHost") or "")
        if path.startswith(CDI_GPU_PREFIX):
            ids.append(path.removeprefix(CDI_GPU_PREFIX))
    for request in host.get("DeviceRequests") or ():
        ids.extend(_docker_request_ids(_mapping(request)))
    return tuple(dict.fromkeys(i for i in ids if i))


def _cdi_ids_from_argv(argv: Iterable[object], image: str) -> list[str]:
    """``--device nvidia.com/gpu=X`` values among the options of a ``podman create`` command line.

    Reading stops at the image, so that the container's own arguments (``vllm --device cuda``) never count.
    """
    words = [str(w) for w in argv]
    if image and image in words:
        words = words[: words.index(image)]
    ids: list[str] = []
    for i, word in enumerate(words):
        if word == _DEVICE_FLAGS[0] and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith(_DEVICE_FLAGS[1]):
            value = word.removeprefix(_DEVICE_FLAGS[1])
        else:
            continue
        if value.startswith(CDI_GPU_PREFIX):
            ids.append(value.removeprefix(CDI_GPU_PREFIX))
    return ids


def _docker_request_ids(request: Mapping[str, Any]) -> list[str]:
    capabilities = {str(c) for group in request.get("Capabilities") or () for c in (group or ())}
    if str(request.get("Driver") or "") != "nvidia" and "gpu" not in capabilities:
        return []
    device_ids = [str(i) for i in request.get("DeviceIDs") or ()]
    if device_ids:
        return device_ids
    count = request.get("Count")
    if count == -1:
        return ["all"]
    # "count: N" gets the first N GPUs, as podman-compose maps it too.
    return [str(i) for i in range(count)] if isinstance(count, int) and count > 0 else []


@dataclass(frozen=True)
class ComposeVersion:
    """Which compose implementation answered, and its version."""

    flavour: Literal["podman-compose", "docker-compose"]
    version: tuple[int, ...]
    engine_version: tuple[int, ...] | None = None
    """podman's version, where podman-compose reports it."""

    @property
    def text(self) -> str:
        return ".".join(map(str, self.version))


def parse_version_number(text: str) -> tuple[int, ...] | None:
    """The first dotted version in ``text`` (``v2.29.1-desktop.1`` → ``(2, 29, 1)``)."""
    match = re.search(r"(?<![\w.])" + _VERSION, text)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def parse_compose_version(output: str) -> ComposeVersion | None:
    """What ``podman-compose version`` or ``docker compose version`` printed; ``None`` when unrecognised.

    ``podman-compose version 1.6.0\\npodman version 4.3.1`` → podman-compose 1.6.0 (podman 4.3.1);
    ``Docker Compose version v2.29.1`` and ``docker-compose version 1.29.2, build 5becea4c`` → docker-compose.
    """
    podman_compose = re.search(r"podman-compose version:?\s*" + _VERSION, output, re.IGNORECASE)
    if podman_compose:
        podman = re.search(r"(?:^|\s)podman version:?\s*" + _VERSION, output, re.IGNORECASE | re.MULTILINE)
        return ComposeVersion(
            "podman-compose",
            tuple(int(p) for p in podman_compose.group(1).split(".")),
            tuple(int(p) for p in podman.group(1).split(".")) if podman else None,
        )
    docker = re.search(r"docker[ -]compose version:?\s*" + _VERSION, output, re.IGNORECASE)
    if docker:
        return ComposeVersion("docker-compose", tuple(int(p) for p in docker.group(1).split(".")))
    return None


def normalize_project_name(name: str) -> str:
    """As compose does: lower case, only ``[a-z0-9_-]`` kept, leading ``_``/``-`` dropped."""
    return re.sub(r"[^a-z0-9_-]", "", name.lower()).lstrip("_-")


def project_name(
    compose_files: Sequence[Path], env: Mapping[str, str], compose_docs: Sequence[Mapping[str, Any]] = ()
) -> str:
    """The compose project name: ``COMPOSE_PROJECT_NAME``, else the files' top-level ``name:`` (the last
    file that has one wins), else the first file's folder; normalized. Raises ``ConfigError`` when
    nothing usable is left."""
    candidates: list[tuple[str, str]] = []
    if env.get("COMPOSE_PROJECT_NAME"):
        candidates.append(("COMPOSE_PROJECT_NAME", env["COMPOSE_PROJECT_NAME"]))
    names = [str(doc["name"]) for doc in compose_docs if isinstance(doc, Mapping) and doc.get("name")]
    if names:
        candidates.append(("the compose files' name:", names[-1]))
    if compose_files:
        candidates.append(("the first compose file's folder", compose_files[0].absolute().parent.name))
    if not candidates:
        raise ConfigError("no compose file given, so there is no project name; set GPUPLANE_COMPOSE_FILES")
    source, raw = candidates[0]
    name = normalize_project_name(raw)
    if not name:
        raise ConfigError(
            f"the project name {raw!r} (from {source}) has no letter or digit left once normalized; "
            "set COMPOSE_PROJECT_NAME or a top-level name: in the compose file"
        )
    return name


def parse_services(compose_docs: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Each service of the merged compose files and the services it depends on (``depends_on`` in list
    or mapping form, and ``links``), sorted. Raises ``ConfigError`` for a shape compose would reject."""
    deps: dict[str, set[str]] = {}
    for doc in compose_docs:
        services = doc.get("services") if isinstance(doc, Mapping) else None
        if services is None:
            continue
        if not isinstance(services, Mapping):
            raise ConfigError(f"services: must be a mapping of service names, not {type(services).__name__}")
        for name, spec in services.items():
            found = deps.setdefault(str(name), set())
            if spec is None:
                continue
            if not isinstance(spec, Mapping):
                raise ConfigError(f"services.{name} must be a mapping, not {type(spec).__name__}")
            found.update(_dependencies(str(name), spec))
    return {name: tuple(sorted(found)) for name, found in deps.items()}


def _dependencies(service: str, spec: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    depends_on = spec.get("depends_on")
    if isinstance(depends_on, str):
        found.add(depends_on)
    elif isinstance(depends_on, Mapping | list | tuple):
        found.update(str(d) for d in depends_on)
    elif depends_on is not None:
        raise ConfigError(f"services.{service}.depends_on must be a list or a mapping")
    for link in spec.get("links") or ():
        found.add(str(link).split(":", 1)[0])
    found.discard(service)
    return found
