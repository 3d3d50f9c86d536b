"""GPU backends and how one is chosen.

``BACKENDS`` is the one registry of backend name -> opener; ``open_backend`` resolves
``auto`` (simulated with a fleet file; else NVML, then nvidia-smi, then none).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

from services.detector.backends.base import Backend, BackendUnavailable, HostScan
from services.detector.backends.none import NoneBackend
from services.detector.backends.nvml import NvmlBackend
from services.detector.backends.simulated import SimulatedBackend
from services.detector.backends.smi import SmiBackend
from shared.errors import ConfigError

__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "Backend",
    "BackendUnavailable",
    "HostScan",
    "OpenRequest",
    "open_backend",
]

log = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "nvml", "nvidia-smi", "simulated", "none")

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


def _open_nvml(request: OpenRequest) -> Backend:
    return NvmlBackend.open(host=request.host, nvml_module=request.nvml_module)


def _open_smi(request: OpenRequest) -> Backend:
    return SmiBackend.open(host=request.host, binary=request.nvidia_smi, runner=request.runner)


def _open_simulated(request: OpenRequest) -> Backend:
    if request.fleet is None:
        raise ConfigError(
            "the simulated GPU backend needs a fleet file (--fleet deploy/fleets/reference.yaml)"
        )
    return SimulatedBackend.open(host=request.host, fleet=request.fleet)


def _open_none(request: OpenRequest) -> Backend:
    problems = request.problems or ("GPU detection is turned off (backend 'none')",)
    return NoneBackend(host=request.host, problems=problems)


BACKENDS: dict[str, Callable[[OpenRequest], Backend]] = {
    "nvml": _open_nvml,
    "nvidia-smi": _open_smi,
    "simulated": _open_simulated,
    "none": _open_none,
}


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
    if choice not in BACKEND_NAMES:
        raise ConfigError(f"unknown GPU backend {choice!r}; valid names: {', '.join(BACKEND_NAMES)}")
    request = OpenRequest(
        host=host, fleet=fleet, nvidia_smi=nvidia_smi, nvml_module=nvml_module, runner=runner
    )
    if choice != "auto":
        return BACKENDS[choice](request)
    if fleet is not None:
        return BACKENDS["simulated"](request)
    problems: list[str] = []
    for name in _AUTO_ORDER:
        try:
            return BACKENDS[name](request)
        except BackendUnavailable as err:
            log.info("GPU backend %s unavailable: %s", name, err)
            problems.append(str(err))
    return BACKENDS["none"](replace(request, problems=tuple(problems)))
