"""GPU backends and how one is chosen.

``REGISTRY`` is the one registry of backend name -> opener; ``open_backend`` opens by name.
``auto`` is an opener too: simulated with a fleet file; else NVML, then nvidia-smi, then none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

from services.detector.backends.base import Backend, BackendUnavailable, HostScan
from services.detector.backends.none import NoneBackend
from services.detector.backends.nvml import NvmlBackend
from services.detector.backends.simulated import SimulatedBackend
from services.detector.backends.smi import SmiBackend
from shared.errors import ConfigError
from shared.plugins import Registry

__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "Backend",
    "BackendUnavailable",
    "HostScan",
    "OpenRequest",
    "REGISTRY",
    "open_backend",
]

log = logging.getLogger(__name__)

_AUTO_ORDER = ("nvml", "nvidia-smi")


@dataclass(frozen=True)
class OpenRequest:
    """Everything an opener may need; each opener takes what it uses."""

    host: str
    fleet: Path | None = None
    nvidia_smi: str = "nvidia-smi"
    nvml_module: ModuleType | None = None
    runner: Callable[[list[str]], str] | None = None
    problems: tuple[str, ...] = ()


REGISTRY: Registry[[OpenRequest], Backend] = Registry("GPU backend")
"""Backend name -> opener, ``auto`` first: the order ``--backend``'s error and the docs list them."""


@REGISTRY.registers("auto")
def _open_auto(request: OpenRequest) -> Backend:
    """``simulated`` with a fleet file; else the first of NVML and nvidia-smi that opens; else ``none``
    carrying why each was unusable."""
    if request.fleet is not None:
        return REGISTRY.make("simulated", request)
    problems: list[str] = []
    for name in _AUTO_ORDER:
        try:
            return REGISTRY.make(name, request)
        except BackendUnavailable as err:
            log.info("GPU backend %s unavailable: %s", name, err)
            problems.append(str(err))
    return REGISTRY.make("none", replace(request, problems=tuple(problems)))


@REGISTRY.registers("nvml")
def _open_nvml(request: OpenRequest) -> Backend:
    return NvmlBackend.open(host=request.host, nvml_module=request.nvml_module)


@REGISTRY.registers("nvidia-smi")
def _open_smi(request: OpenRequest) -> Backend:
    return SmiBackend.open(host=request.host, binary=request.nvidia_smi, runner=request.runner)


@REGISTRY.registers("simulated")
def _open_simulated(request: OpenRequest) -> Backend:
    if request.fleet is None:
        raise ConfigError("the simulated GPU backend needs a fleet file (--fleet deploy/fleets/reference.yaml)")
    return SimulatedBackend.open(host=request.host, fleet=request.fleet)


@REGISTRY.registers("none")
def _open_none(request: OpenRequest) -> Backend:
    problems = request.problems or ("GPU detection is turned off (backend 'none')",)
    return NoneBackend(host=request.host, problems=problems)


BACKEND_NAMES: tuple[str, ...] = REGISTRY.names()
BACKENDS: Mapping[str, Callable[[OpenRequest], Backend]] = {
    name: REGISTRY.get(name) for name in BACKEND_NAMES if name != "auto"
}
"""The backends that open a device (``auto`` only chooses among them)."""


def open_backend(
    choice: str,
    *,
    host: str,
    fleet: Path | None = None,
    nvidia_smi: str = "nvidia-smi",
    nvml_module: ModuleType | None = None,
    runner: Callable[[list[str]], str] | None = None,
) -> Backend:
    """Open the backend named ``choice`` (one of ``BACKEND_NAMES``).

    ``auto`` picks ``simulated`` when ``fleet`` is given, else the first of NVML and
    nvidia-smi that opens, else ``none`` carrying why each was unusable. An explicit choice
    that cannot open raises ``BackendUnavailable``; an unknown one, or ``simulated`` without a
    fleet file, raises ``ConfigError``. ``nvml_module`` and ``runner`` replace ``pynvml`` and
    the nvidia-smi subprocess (tests).
    """
    request = OpenRequest(host=host, fleet=fleet, nvidia_smi=nvidia_smi, nvml_module=nvml_module, runner=runner)
    return REGISTRY.make(choice, request)
