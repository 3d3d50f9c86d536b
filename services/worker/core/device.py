"""Which device a worker serves and the figures it derives from the GPU: slots, speed, VRAM."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from shared.contracts import Gpu
from shared.errors import ConfigError

CPU = "cpu"
_CUDA = re.compile(r"^cuda:(\d+)$")

MB_PER_GB = 1024
REFERENCE_SM_COUNT = 80
REFERENCE_SM_CLOCK_MHZ = 1665
"""The reference RTX A5500: speed 1.0 is what the catalog's ``latency_s`` figures mean."""
MIN_SPEED = 0.05
MAX_SPEED = 8.0
CPU_SPEED = 0.1
CPU_SIMULATED_VRAM_MB = 16384


def parse_device(value: str) -> str:
    """One device name, normalised (``cuda:N`` with N >= 0, or ``cpu``); ``ConfigError`` otherwise."""
    cleaned = value.strip().lower()
    if cleaned == CPU or _CUDA.match(cleaned):
        return f"cuda:{int(cleaned[5:])}" if cleaned != CPU else CPU
    raise ConfigError(f"invalid device {value.strip()!r}: use cuda:N (N = GPU index, 0 or more) or cpu")


def parse_devices(devices: str | None, device: str | None) -> tuple[str, ...]:
    """The devices to serve, validated and without duplicates.

    ``device`` (one device: ``--device``, ``--gpu``, ``DEVICE``) wins over the ``devices`` list
    (``DEVICES=cuda:0,cuda:1``): it is how each child of a multi-device worker is told its own.
    Neither given: an empty tuple.
    """
    if device is not None and device.strip():
        return (parse_device(device),)
    if devices is None:
        return ()
    return tuple(dict.fromkeys(parse_device(part) for part in devices.split(",") if part.strip()))


def gpu_index(device: str) -> int | None:
    """N of ``cuda:N``; None for ``cpu``."""
    match = _CUDA.match(device)
    return int(match.group(1)) if match else None


def default_worker_id(host_name: str, device: str) -> str:
    """``<host>-cuda<N>`` or ``<host>-cpu``."""
    return f"{host_name}-{device.replace(':', '')}"


def default_slots(vram_total_mb: int | None) -> int:
    """Concurrent requests a GPU of this size runs: under 12 GB 1, under 20 GB 2, else 3 (cpu/unknown: 1)."""
    if vram_total_mb is None:
        return 1
    if vram_total_mb < 12 * MB_PER_GB:
        return 1
    if vram_total_mb < 20 * MB_PER_GB:
        return 2
    return 3


def default_speed(sm_count: int | None, max_sm_clock_mhz: int | None) -> float:
    """SMs x clock relative to the reference GPU, clamped to [0.05, 8]; 1.0 when either is unknown."""
    if not sm_count or not max_sm_clock_mhz:
        return 1.0
    raw = sm_count * max_sm_clock_mhz / (REFERENCE_SM_COUNT * REFERENCE_SM_CLOCK_MHZ)
    return min(MAX_SPEED, max(MIN_SPEED, raw))


@dataclass(frozen=True)
class DeviceProfile:
    """Everything the worker knows about its device once start-up has resolved it."""

    device: str
    vram_total_mb: int
    vram_used_mb: int
    """Taken by others when the worker started (a desktop session, say): not the worker's to use."""
    speed: float
    slots: int
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    gpu_name: str | None = None


def find_gpu(device: str, gpus: Iterable[Gpu], host: str) -> Gpu:
    """The inventory's GPU for ``cuda:N``; ``ConfigError`` naming the GPUs that exist otherwise."""
    index = gpu_index(device)
    listed = tuple(gpus)
    for gpu in listed:
        if gpu.index == index:
            return gpu
    existing = ", ".join(f"cuda:{g.index} ({g.name})" for g in sorted(listed, key=lambda g: g.index)) or "none"
    raise ConfigError(f"{device} is not a GPU of host {host}; the detector reports: {existing}")


def make_profile(
    device: str,
    gpu: Gpu | None,
    *,
    vram_mb: int | None = None,
    speed: float | None = None,
    slots: int | None = None,
) -> DeviceProfile:
    """Resolve the device's figures: explicit settings win, then the GPU's, then the defaults.

    ``gpu`` is None for ``cpu`` or when no inventory came; a GPU device then needs ``vram_mb``.
    """
    if gpu is None:
        if device != CPU and vram_mb is None:
            raise ConfigError(f"no inventory describes {device}: set GPUPLANE_VRAM_MB (--vram-mb)")
        total = vram_mb if vram_mb is not None else CPU_SIMULATED_VRAM_MB
        return DeviceProfile(
            device=device,
            vram_total_mb=total,
            vram_used_mb=0,
            speed=speed if speed is not None else (CPU_SPEED if device == CPU else 1.0),
            slots=slots if slots is not None else (1 if device == CPU else default_slots(total)),
            gpu_index=gpu_index(device),
        )
    total = vram_mb if vram_mb is not None else gpu.vram_total_mb
    return DeviceProfile(
        device=device,
        vram_total_mb=total,
        vram_used_mb=0 if vram_mb is not None else min(gpu.vram_used_mb, total),
        speed=speed if speed is not None else default_speed(gpu.sm_count, gpu.max_sm_clock_mhz),
        slots=slots if slots is not None else default_slots(total),
        gpu_index=gpu.index,
        gpu_uuid=gpu.uuid,
        gpu_name=gpu.name,
    )
