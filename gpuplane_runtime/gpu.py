"""Pick the GPU an AI service should use inside its container: the one gpuplane assigned, or a fallback.

This module uses only the standard library, so a service can ``pip install`` gpuplane or simply copy
this one file into its image. torch and pynvml are imported lazily, only by the probes that need them.

How a container learns its assignment from gpuplane's compose override:

- The container runtime (CDI or the NVIDIA toolkit) exposes only the assigned GPUs, so inside the
  container CUDA numbers them from 0 (``cuda:0``, ``cuda:1``...), in PCI bus order because the
  override sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
- ``GPUPLANE_ASSIGNED_GPUS`` lists the host ids of the assigned GPUs (UUIDs such as ``GPU-...`` or
  host indices), comma-separated. ``NVIDIA_VISIBLE_DEVICES`` is read when it is absent; its values
  ``all``, ``void`` and ``none`` say nothing about which GPU was assigned (CDI specs set ``void``
  even when they do inject GPUs).
- ``CUDA_VISIBLE_DEVICES``, when a user sets it, selects and renumbers GPUs among those the
  container sees (indices or UUIDs); CUDA ordinals then follow its order.
- ``VLLM_TENSOR_PARALLEL_SIZE`` (multi-GPU services) and ``VRAM_BUDGET_GB`` (when a budget is set).

Typical use::

    from gpuplane_runtime import get_target_gpu

    target = get_target_gpu()          # raises NoGpuAvailable when no GPU is usable
    torch.cuda.set_device(target.index)
    model.to(target.device)
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "ASSIGNED_GPUS_ENV",
    "ChainProbe",
    "GpuEnvError",
    "GpuProbe",
    "NoGpuAvailable",
    "NvidiaSmiProbe",
    "NvmlProbe",
    "TargetGpu",
    "TorchProbe",
    "assigned_gpus",
    "cuda_ordinals",
    "default_probe",
    "get_target_gpu",
    "parse_nvidia_smi_list",
    "tensor_parallel_size",
    "vram_budget_gb",
]

logger = logging.getLogger("gpuplane.runtime")

ASSIGNED_GPUS_ENV = "GPUPLANE_ASSIGNED_GPUS"
NVIDIA_VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"
CUDA_VISIBLE_DEVICES_ENV = "CUDA_VISIBLE_DEVICES"
CUDA_DEVICE_ORDER_ENV = "CUDA_DEVICE_ORDER"
TENSOR_PARALLEL_ENV = "VLLM_TENSOR_PARALLEL_SIZE"
VRAM_BUDGET_ENV = "VRAM_BUDGET_GB"

_NO_IDS = frozenset({"", "all", "void", "none"})
"""NVIDIA_VISIBLE_DEVICES values that name no particular GPU."""

_SMI_LINE = re.compile(r"^GPU (\d+): .*\(UUID: ([^)]+)\)\s*$")


class NoGpuAvailable(RuntimeError):
    """No CUDA device is usable. The message says what was assigned, what was tried and why each failed."""

    def __init__(
        self, message: str, *, assignment: tuple[str, ...] = (), tried: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.assignment = assignment
        """Host ids of the assigned GPUs (empty when the container has no assignment)."""
        self.tried = tried
        """(what, why it failed) for each probe or device tried, in order."""


class GpuEnvError(ValueError):
    """An environment variable set by gpuplane (or a user) has a value that cannot be used."""


@dataclass(frozen=True)
class TargetGpu:
    """The CUDA device this process should use."""

    index: int
    """The CUDA ordinal inside this container/process (what ``torch.cuda.set_device`` takes)."""
    assigned: str | None
    """Host id (UUID or index, as in the assignment) of this GPU; None when there is no assignment or
    this GPU could not be matched to an assigned one."""
    fallback: bool
    """True when this is not the (first) assigned GPU because that one is missing or unusable."""
    reason: str
    """One line on why this GPU was picked."""
    assignment: tuple[str, ...] = ()
    """Host ids of every GPU assigned to the service (several for tensor-parallel services)."""
    probe: str = ""
    """Name of the probe that found the GPU: torch, pynvml, nvidia-smi, or an injected probe's name."""

    @property
    def device(self) -> str:
        """The device string, e.g. ``"cuda:0"``."""
        return f"cuda:{self.index}"


class GpuProbe(Protocol):
    """Answers which CUDA ordinals this process can use.

    Any method may raise; ``get_target_gpu`` turns an exception into a reason, never lets it through.
    """

    @property
    def name(self) -> str:
        """Short name shown in reasons and errors."""
        ...

    def count(self) -> int:
        """How many CUDA ordinals the process sees (after ``CUDA_VISIBLE_DEVICES``)."""
        ...

    def check(self, ordinal: int) -> str | None:
        """None when the ordinal is usable, otherwise why it is not."""
        ...

    def uuid(self, ordinal: int) -> str | None:
        """The GPU's UUID (``GPU-...``) when the probe knows it, else None."""
        ...


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _is_uuid(device_id: str) -> bool:
    return device_id[:4].upper() in ("GPU-", "MIG-")


def _norm_uuid(raw: str) -> str:
    raw = raw.strip()
    return raw if _is_uuid(raw) or not raw else f"GPU-{raw}"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def assigned_gpus(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Host ids of the GPUs assigned to this container, in the order given; empty when unknown.

    Read from ``GPUPLANE_ASSIGNED_GPUS``, else from ``NVIDIA_VISIBLE_DEVICES`` unless that is
    ``all``/``void``/``none``.
    """
    env = _env(environ)
    ours = env.get(ASSIGNED_GPUS_ENV)
    if ours is not None and _split(ours):
        return _split(ours)
    nvidia = env.get(NVIDIA_VISIBLE_DEVICES_ENV, "").strip()
    if nvidia.lower() in _NO_IDS:
        return ()
    return _split(nvidia)


def _assignment_source(env: Mapping[str, str]) -> str:
    return ASSIGNED_GPUS_ENV if _split(env.get(ASSIGNED_GPUS_ENV, "")) else NVIDIA_VISIBLE_DEVICES_ENV


def vram_budget_gb(environ: Mapping[str, str] | None = None) -> float | None:
    """The VRAM budget in GB from ``VRAM_BUDGET_GB``; None when unset or empty.

    Raises GpuEnvError when the value is not a positive, finite number.
    """
    raw = _env(environ).get(VRAM_BUDGET_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise GpuEnvError(f"{VRAM_BUDGET_ENV} must be a positive number of GB (e.g. 6.5), got {raw!r}")
    return value


def tensor_parallel_size(environ: Mapping[str, str] | None = None) -> int:
    """How many GPUs to shard the model over, from ``VLLM_TENSOR_PARALLEL_SIZE``; 1 when unset or empty.

    Raises GpuEnvError when the value is not a whole number >= 1.
    """
    raw = _env(environ).get(TENSOR_PARALLEL_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdecimal() or int(raw) < 1:
        raise GpuEnvError(f"{TENSOR_PARALLEL_ENV} must be a whole number >= 1, got {raw!r}")
    return int(raw)


# --- probes -----------------------------------------------------------------------------------------


class TorchProbe:
    """Asks PyTorch. Checking an ordinal creates a CUDA context on it (``torch.cuda.mem_get_info``)."""

    name = "torch"

    def __init__(self) -> None:
        import torch  # lazy: only services with torch get here

        self._torch: Any = torch

    def count(self) -> int:
        cuda = self._torch.cuda
        if not cuda.is_available():
            version = getattr(self._torch, "__version__", "?")
            if getattr(self._torch.version, "cuda", None) is None:
                raise RuntimeError(f"torch {version} is built without CUDA")
            raise RuntimeError(f"torch.cuda.is_available() is False (torch {version}; no driver or no GPU visible)")
        return int(cuda.device_count())

    def check(self, ordinal: int) -> str | None:
        free, _total = self._torch.cuda.mem_get_info(ordinal)
        return None if free > 0 else "no free memory"

    def uuid(self, ordinal: int) -> str | None:
        raw = getattr(self._torch.cuda.get_device_properties(ordinal), "uuid", None)
        return _norm_uuid(str(raw)) if raw is not None else None


class _NvidiaListProbe:
    """Base for probes that list the container's GPUs outside CUDA (NVML, nvidia-smi).

    Those tools ignore ``CUDA_VISIBLE_DEVICES`` and list GPUs in PCI bus order, so this maps CUDA
    ordinals onto their list the way CUDA would (exact when ``CUDA_DEVICE_ORDER=PCI_BUS_ID``).
    """

    name = "?"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._cvd = _env(environ).get(CUDA_VISIBLE_DEVICES_ENV)
        self._listed: list[str | None] | None = None
        self._ordinals: list[int] | None = None

    def _list(self) -> list[str | None]:
        """UUID (or None when unreadable) of each GPU the tool sees, by its own index."""
        raise NotImplementedError

    def _check_listed(self, listed_index: int) -> str | None:
        raise NotImplementedError

    def _map(self) -> list[int]:
        if self._ordinals is None:
            self._listed = self._list()
            self._ordinals = cuda_ordinals(self._listed, self._cvd)
        return self._ordinals

    def count(self) -> int:
        return len(self._map())

    def check(self, ordinal: int) -> str | None:
        return self._check_listed(self._map()[ordinal])

    def uuid(self, ordinal: int) -> str | None:
        index = self._map()[ordinal]
        return self._listed[index] if self._listed is not None else None


class NvmlProbe(_NvidiaListProbe):
    """Asks NVML through pynvml (package nvidia-ml-py). Creates no CUDA context, so it suits vLLM."""

    name = "pynvml"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(environ)
        import pynvml  # lazy: only services with nvidia-ml-py get here

        self._nvml: Any = pynvml
        pynvml.nvmlInit()

    def _list(self) -> list[str | None]:
        listed: list[str | None] = []
        for index in range(int(self._nvml.nvmlDeviceGetCount())):
            try:
                raw = self._nvml.nvmlDeviceGetUUID(self._nvml.nvmlDeviceGetHandleByIndex(index))
                listed.append(_norm_uuid(raw.decode() if isinstance(raw, bytes) else str(raw)))
            except self._nvml.NVMLError:
                listed.append(None)
        return listed

    def _check_listed(self, listed_index: int) -> str | None:
        memory = self._nvml.nvmlDeviceGetMemoryInfo(self._nvml.nvmlDeviceGetHandleByIndex(listed_index))
        return None if memory.free > 0 else "no free memory"


class NvidiaSmiProbe(_NvidiaListProbe):
    """Runs ``nvidia-smi -L``: a GPU is usable when it is listed with its UUID."""

    name = "nvidia-smi"

    def __init__(self, environ: Mapping[str, str] | None = None, *, timeout_s: float = 10.0) -> None:
        super().__init__(environ)
        found = shutil.which("nvidia-smi", path=_env(environ).get("PATH"))
        if found is None:
            raise FileNotFoundError("nvidia-smi is not on PATH")
        self._exe = found
        self._timeout_s = timeout_s

    def _list(self) -> list[str | None]:
        done = subprocess.run([self._exe, "-L"], capture_output=True, text=True, timeout=self._timeout_s, check=False)
        if done.returncode != 0:
            detail = (done.stdout + done.stderr).strip().splitlines()
            raise RuntimeError(f"nvidia-smi -L exited {done.returncode}: {detail[0] if detail else 'no output'}")
        return parse_nvidia_smi_list(done.stdout)

    def _check_listed(self, listed_index: int) -> str | None:
        return None if self._listed and self._listed[listed_index] else "not listed by nvidia-smi -L"


def parse_nvidia_smi_list(text: str) -> list[str | None]:
    """UUIDs from ``nvidia-smi -L`` output, by GPU index; MIG lines are skipped, gaps are None."""
    found: dict[int, str] = {}
    for line in text.splitlines():
        match = _SMI_LINE.match(line.strip())
        if match:
            found[int(match.group(1))] = match.group(2).strip()
    size = max(found) + 1 if found else 0
    return [found.get(index) for index in range(size)]


def cuda_ordinals(listed: Sequence[str | None], cuda_visible_devices: str | None) -> list[int]:
    """Which listed GPUs (by index) CUDA ordinals 0, 1... are, given ``CUDA_VISIBLE_DEVICES``.

    Like CUDA: entries are indices or (prefixes of) ``GPU-`` UUIDs, and the list ends at the first
    entry that is invalid, unknown, ambiguous or repeated; an empty value hides every GPU.
    """
    if cuda_visible_devices is None:
        return list(range(len(listed)))
    ordinals: list[int] = []
    for entry in (part.strip() for part in cuda_visible_devices.split(",")):
        index: int | None = None
        if entry.isdecimal():
            index = int(entry) if int(entry) < len(listed) else None
        elif entry[:4].upper() == "GPU-":
            hits = [i for i, uuid in enumerate(listed) if uuid and uuid.lower().startswith(entry.lower())]
            index = hits[0] if len(hits) == 1 else None
        if index is None or index in ordinals:
            break
        ordinals.append(index)
    return ordinals


class _Unavailable:
    """Stands in when no probe could be built; its count() raises with why."""

    name = "none"

    def __init__(self, why: str) -> None:
        self._why = why

    def count(self) -> int:
        raise RuntimeError(self._why)

    def check(self, ordinal: int) -> str | None:
        return self._why

    def uuid(self, ordinal: int) -> str | None:
        return None


class ChainProbe:
    """Tries probes in order; the first that sees at least one GPU answers everything after.

    Each entry is a (name, factory) pair; a factory may raise (e.g. ImportError), which counts as a
    failed try. ``count()`` raises with every try's reason when none sees a GPU.
    """

    def __init__(self, factories: Sequence[tuple[str, Callable[[], GpuProbe]]]) -> None:
        self._factories = list(factories)
        self._chosen: GpuProbe | None = None
        self.tried: list[tuple[str, str]] = []
        """(probe name, why it was passed over) for each probe that did not answer."""

    @property
    def name(self) -> str:
        return self._chosen.name if self._chosen is not None else "+".join(name for name, _ in self._factories)

    def count(self) -> int:
        if self._chosen is not None:
            return self._chosen.count()
        self.tried = []
        for name, factory in self._factories:
            try:
                probe = factory()
                seen = probe.count()
            except Exception as exc:  # noqa: BLE001 - any failure passes on to the next probe
                self.tried.append((name, _describe(exc)))
                continue
            if seen > 0:
                self._chosen = probe
                if self.tried:
                    logger.warning(
                        "GPU probe(s) %s failed; using %s",
                        "; ".join(f"{n}: {why}" for n, why in self.tried),
                        name,
                    )
                return seen
            self.tried.append((name, "sees no GPU"))
        raise RuntimeError("; ".join(f"{name}: {why}" for name, why in self.tried))

    def _probe(self) -> GpuProbe:
        if self._chosen is None:
            self.count()
        assert self._chosen is not None
        return self._chosen

    def check(self, ordinal: int) -> str | None:
        return self._probe().check(ordinal)

    def uuid(self, ordinal: int) -> str | None:
        return self._probe().uuid(ordinal)


def default_probe(environ: Mapping[str, str] | None = None) -> GpuProbe:
    """torch if importable, then pynvml if importable, then ``nvidia-smi -L``, in one ChainProbe."""
    env = _env(environ)
    factories: list[tuple[str, Callable[[], GpuProbe]]] = []
    for module, name, factory in (
        ("torch", "torch", lambda: TorchProbe()),
        ("pynvml", "pynvml", lambda: NvmlProbe(env)),
    ):
        if importlib.util.find_spec(module) is not None:
            factories.append((name, factory))
    factories.append(("nvidia-smi", lambda: NvidiaSmiProbe(env)))
    return ChainProbe(factories)


# --- choosing ---------------------------------------------------------------------------------------


@dataclass
class _Ordinal:
    index: int
    host_id: str | None = None
    """The assigned host id this ordinal is, when known."""
    uuid: str | None = None

    def label(self) -> str:
        ids = [x for x in (self.host_id, self.uuid) if x]
        return f"cuda:{self.index}" + (f" ({', '.join(dict.fromkeys(ids))})" if ids else "")


def _safe_uuid(probe: GpuProbe, ordinal: int) -> str | None:
    try:
        raw = probe.uuid(ordinal)
    except Exception:  # noqa: BLE001 - an unknown UUID only makes matching positional
        return None
    return _norm_uuid(raw) if raw else None


def _safe_check(probe: GpuProbe, ordinal: int) -> str | None:
    try:
        return probe.check(ordinal)
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable", with the reason kept
        return _describe(exc)


def _match_uuid(entry: str, assignment: Sequence[str]) -> str | None:
    """The assigned UUID that ``entry`` (a UUID or a prefix of one) names, if exactly one."""
    hits = [a for a in assignment if _is_uuid(a) and a.lower().startswith(entry.lower())]
    return hits[0] if len(hits) == 1 else None


def _identify(ordinals: list[_Ordinal], assignment: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    """Set ``host_id`` on the ordinals that are assigned GPUs. Returns a note when matching was guessed."""
    if not assignment:
        return None
    if any(_is_uuid(a) for a in assignment) and any(o.uuid for o in ordinals):
        for o in ordinals:
            o.host_id = _match_uuid(o.uuid, assignment) if o.uuid else None
        return None
    # Positional: the runtime exposes the assigned GPUs as container devices 0..N-1 in PCI bus order,
    # which for host indices is ascending order; UUIDs are taken in the order listed.
    numeric = all(a.isdecimal() for a in assignment)
    container = sorted(assignment, key=int) if numeric else list(assignment)
    cvd = env.get(CUDA_VISIBLE_DEVICES_ENV)
    pci_order = env.get(CUDA_DEVICE_ORDER_ENV, "").strip().upper() == "PCI_BUS_ID"
    if cvd is None and len(ordinals) > len(assignment):
        # The container sees more GPUs than were assigned: the runtime did not isolate them.
        if numeric and pci_order:
            for o in ordinals:
                o.host_id = str(o.index) if str(o.index) in container else None
            return "the container sees every GPU; matched host indices to CUDA ordinals (PCI bus order)"
        return (
            f"the container sees {len(ordinals)} GPUs but was assigned {len(assignment)}, "
            "and cannot tell which is which"
        )
    entries = list(_split(cvd)) if cvd is not None else [str(i) for i in range(len(ordinals))]
    for o, entry in zip(ordinals, entries, strict=False):
        if entry.isdecimal():
            o.host_id = container[int(entry)] if int(entry) < len(container) else None
        elif _is_uuid(entry):
            o.host_id = _match_uuid(entry, assignment)
    return None


def _no_gpu_message(
    assignment: tuple[str, ...], source: str, probe: str, tried: Sequence[tuple[str, str]], env: Mapping[str, str]
) -> str:
    parts = ["No usable GPU."]
    parts.append(f"Assigned: {','.join(assignment)} (from {source})." if assignment else "Assigned: nothing.")
    parts.append(f"Tried ({probe}): " + "; ".join(f"{what}: {why}" for what, why in tried) + ".")
    hints = []
    nvd = env.get(NVIDIA_VISIBLE_DEVICES_ENV)
    if nvd is not None and nvd.strip().lower() in ("void", "none", ""):
        hints.append(f"{NVIDIA_VISIBLE_DEVICES_ENV}={nvd!r}")
    cvd = env.get(CUDA_VISIBLE_DEVICES_ENV)
    if cvd is not None:
        hides = not cvd.strip() or cvd.strip().startswith("-")
        hints.append(f"{CUDA_VISIBLE_DEVICES_ENV}={cvd!r}" + (" (hides every GPU from CUDA)" if hides else ""))
    if hints:
        parts.append("Environment: " + ", ".join(hints) + ".")
    parts.append("Check that the container was started with GPU devices (gpuplane's compose override) and the driver.")
    return " ".join(parts)


def get_target_gpu(*, probe: GpuProbe | None = None, environ: Mapping[str, str] | None = None) -> TargetGpu:
    """The CUDA device to use: the first assigned GPU if usable, else (with a warning) any usable one.

    For a multi-GPU assignment the target is the first assigned GPU (usually ``cuda:0``); frameworks
    that shard (vLLM) use every visible GPU themselves. ``probe`` defaults to ``default_probe()``;
    ``environ`` to ``os.environ``. Raises NoGpuAvailable when no GPU is usable.
    """
    env = _env(environ)
    assignment = assigned_gpus(env)
    source = _assignment_source(env)
    probe = default_probe(env) if probe is None else probe
    try:
        seen = probe.count()
    except Exception as exc:  # noqa: BLE001 - reported in NoGpuAvailable with the reason kept
        chained = probe.tried if isinstance(probe, ChainProbe) else []
        tried = tuple(chained) or ((probe.name, _describe(exc)),)
        raise NoGpuAvailable(
            _no_gpu_message(assignment, source, probe.name, tried, env), assignment=assignment, tried=tried
        ) from exc
    if seen <= 0:
        tried = ((probe.name, "sees no GPU"),)
        raise NoGpuAvailable(
            _no_gpu_message(assignment, source, probe.name, tried, env), assignment=assignment, tried=tried
        )

    ordinals = [_Ordinal(i, uuid=_safe_uuid(probe, i)) for i in range(seen)]
    note = _identify(ordinals, assignment, env)
    preferred = [o for o in ordinals if o.host_id is not None]
    others = [o for o in ordinals if o.host_id is None]
    if assignment and not preferred:
        logger.warning(
            "Assigned GPU(s) %s not found among the %d visible to this process (%s); falling back to any usable GPU",
            ",".join(assignment),
            seen,
            note or ", ".join(o.label() for o in ordinals),
        )

    failures: list[tuple[str, str]] = []
    for candidate in preferred + others:
        why = _safe_check(probe, candidate.index)
        if why is not None:
            failures.append((candidate.label(), why))
            if candidate.host_id is not None:
                logger.warning("Assigned GPU %s unusable: %s", candidate.label(), why)
            else:
                logger.warning("GPU %s unusable: %s", candidate.label(), why)
            continue
        first = preferred[0] if preferred else None
        fallback = bool(assignment) and candidate is not first
        if not assignment:
            reason = f"no GPU assignment in the environment; first usable of {seen} visible"
        elif not fallback:
            reason = f"assigned GPU {candidate.host_id} (from {source})"
        else:
            why_not = "; ".join(f"{w}: {y}" for w, y in failures) or note or "assigned GPU not visible"
            reason = f"fallback from {','.join(assignment)} (from {source}): {why_not}"
            logger.warning(
                "Falling back to GPU %s; assigned was %s (from %s)", candidate.label(), ",".join(assignment), source
            )
        return TargetGpu(
            index=candidate.index,
            assigned=candidate.host_id,
            fallback=fallback,
            reason=reason,
            assignment=assignment,
            probe=probe.name,
        )

    tried = tuple(failures)
    raise NoGpuAvailable(
        _no_gpu_message(assignment, source, probe.name, tried, env), assignment=assignment, tried=tried
    )
