"""What every GPU backend returns and promises."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Protocol

from shared.contracts import Gpu, InventorySource
from shared.errors import DetectionError


@dataclass(frozen=True)
class HostScan:
    """One host's GPUs as one backend saw them in one scan."""

    host: str
    source: InventorySource
    gpus: tuple[Gpu, ...]
    problems: tuple[str, ...] = ()
    """User-actionable sentences, e.g. why a backend was skipped or a field could not be read."""
    fleet_file: str | None = None


class Backend(Protocol):
    """A source of GPU inventory. ``scan`` blocks (it is run in a worker thread).

    One bad GPU does not fail a scan: it is reported with ``healthy=False`` and a
    ``health_reason``. ``scan`` raises ``DetectionError`` only when the whole backend
    failed this time.
    """

    NAME: ClassVar[str]
    SOURCE: ClassVar[InventorySource]

    def scan(self) -> list[HostScan]: ...

    def close(self) -> None: ...


class BackendUnavailable(DetectionError):
    """A backend cannot work on this machine; the message says why in words a user can act on."""


_BUS_ID = re.compile(r"^(?:([0-9A-Fa-f]{1,8}):)?([0-9A-Fa-f]{1,2}):([0-9A-Fa-f]{1,2})\.([0-7])$")


def normalize_bus_id(bus_id: str) -> str:
    """Spell a PCI bus id the way nvidia-smi does: ``00000000:01:00.0`` (8-digit domain, upper case).

    NVML, nvidia-smi, lspci and the kernel disagree on the domain width and the case;
    normalizing lets ids from different sources (e.g. an NVLink's remote end) be compared.
    Anything that is not a bus id is returned stripped but otherwise unchanged.
    """
    text = bus_id.strip()
    match = _BUS_ID.match(text)
    if match is None:
        return text
    domain, bus, device, function = match.groups()
    return f"{int(domain or '0', 16):08X}:{int(bus, 16):02X}:{int(device, 16):02X}.{function}"


def bus_sort_key(bus_id: str) -> tuple[int, int, int, int]:
    """Numeric (domain, bus, device, function); ids that do not parse sort last."""
    match = _BUS_ID.match(bus_id.strip())
    if match is None:
        return (1 << 32, 0, 0, 0)
    domain, bus, device, function = match.groups()
    return (int(domain or "0", 16), int(bus, 16), int(device, 16), int(function))
