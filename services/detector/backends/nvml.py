"""NVML backend: reads every GPU through the NVIDIA Management Library (``pynvml``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError

from services.detector.backends.base import BackendUnavailable, HostScan, bus_sort_key, normalize_bus_id
from services.detector.core import precision_support
from shared.contracts import Gpu, InventorySource
from shared.errors import DetectionError

log = logging.getLogger(__name__)

T = TypeVar("T")

_MIB = 2**20

# Errors that mean "this query does not apply to this GPU/driver", not "this GPU is in trouble".
_ABSENT_ERRORS = (
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_FUNCTION_NOT_FOUND",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_NOT_FOUND",
    "NVML_ERROR_NO_DATA",
    "NVML_ERROR_DEPRECATED",
)
# Past the last NVLink a GPU has, NVML answers one of these for the link number.
_NO_SUCH_LINK_ERRORS = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_INVALID_ARGUMENT")

_INIT_HINTS = {
    "NVML_ERROR_LIBRARY_NOT_FOUND": "libnvidia-ml.so.1 is missing; install the NVIDIA driver",
    "NVML_ERROR_DRIVER_NOT_LOADED": "the NVIDIA kernel module is not loaded; check `lsmod | grep nvidia`",
    "NVML_ERROR_NO_PERMISSION": "no permission to open /dev/nvidia*; run as a user in the video group",
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": "driver library and kernel module differ; reboot after updating",
}


def error_code_name(nvml: ModuleType, code: int) -> str:
    """``NVML_ERROR_*`` constant name for an NVML return code (``NVML_ERROR_<code>`` if unknown)."""
    for name, value in vars(nvml).items():
        if name.startswith("NVML_ERROR_") and value == code:
            return name
    return f"NVML_ERROR_{code}"


def describe_error(nvml: ModuleType, err: Exception) -> str:
    """``"NVML: GPU is lost (NVML_ERROR_GPU_IS_LOST)"`` for an ``NVMLError``."""
    code = getattr(err, "value", None)
    if not isinstance(code, int):
        return f"NVML: {err}"
    return f"NVML: {err} ({error_code_name(nvml, code)})"


def _decode(value: str | bytes) -> str:
    # nvidia-ml-py >= 11.515 returns str; older releases returned bytes.
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class _GpuReading:
    """One GPU's values as read; ``fault`` is the first error that says the GPU is in trouble."""

    nvml_index: int
    uuid: str | None = None
    name: str | None = None
    pci_bus_id: str | None = None
    total_b: int | None = None
    used_b: int | None = None
    free_b: int | None = None
    utilization: float | None = None
    compute_capability: str | None = None
    temperature_c: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    max_sm_clock_mhz: int | None = None
    nvlink_remotes: set[str] = field(default_factory=set)
    on_nvswitch: bool = False
    fault: str | None = None


class NvmlBackend:
    """GPU inventory from NVML. ``nvmlInit`` once on open, ``nvmlShutdown`` on close."""

    NAME: ClassVar[str] = "nvml"
    SOURCE: ClassVar[InventorySource] = InventorySource.NVML

    def __init__(self, nvml: ModuleType, *, host: str) -> None:
        """Wrap an already initialised NVML module; use ``open`` to initialise one."""
        self._nvml = nvml
        self._host = host
        self._open = True
        # Identity last read per NVML index, so a GPU that stops answering keeps its uuid and
        # shows up as "unhealthy" rather than as one GPU disappearing and another appearing.
        self._identity: dict[int, tuple[str, str | None, str | None]] = {}

    @classmethod
    def open(cls, *, host: str, nvml_module: ModuleType | None = None) -> NvmlBackend:
        """Initialise NVML (the given module, default ``import pynvml``).

        Raises ``BackendUnavailable`` saying why when NVML cannot work here.
        """
        nvml = nvml_module if nvml_module is not None else _import_pynvml()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            message = describe_error(nvml, err)
            hint = _INIT_HINTS.get(error_code_name(nvml, err.value))
            raise BackendUnavailable(f"{message}; {hint}" if hint else message) from err
        return cls(nvml, host=host)

    def close(self) -> None:
        """Shut NVML down; safe to call twice."""
        if not self._open:
            return
        self._open = False
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as err:
            # Nothing left to release or retry at shutdown; worth a line, not a failure.
            log.warning("nvmlShutdown failed: %s", describe_error(self._nvml, err))

    def scan(self) -> list[HostScan]:
        """Read every GPU; one GPU failing makes only that GPU unhealthy."""
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as err:
            raise DetectionError(f"{describe_error(nvml, err)} while counting GPUs") from err
        readings = [self._remember(self._read(i)) for i in range(count)]
        readings.sort(key=lambda r: (bus_sort_key(r.pci_bus_id or ""), r.nvml_index))
        index_of_bus = {r.pci_bus_id: i for i, r in enumerate(readings) if r.pci_bus_id}
        switch_members = tuple(i for i, r in enumerate(readings) if r.on_nvswitch)
        try:
            gpus = tuple(
                _to_gpu(index, reading, index_of_bus, switch_members)
                for index, reading in enumerate(readings)
            )
        except ValidationError as err:
            raise DetectionError(f"NVML reported values outside their range: {err}") from err
        return [HostScan(host=self._host, source=self.SOURCE, gpus=gpus)]

    def _remember(self, reading: _GpuReading) -> _GpuReading:
        if reading.uuid is not None:
            self._identity[reading.nvml_index] = (reading.uuid, reading.name, reading.pci_bus_id)
        elif reading.nvml_index in self._identity:
            uuid, name, bus = self._identity[reading.nvml_index]
            reading.uuid = uuid
            reading.name = reading.name or name
            reading.pci_bus_id = reading.pci_bus_id or bus
        return reading

    def _read(self, nvml_index: int) -> _GpuReading:
        nvml = self._nvml
        reading = _GpuReading(nvml_index=nvml_index)
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
        except nvml.NVMLError as err:
            reading.fault = describe_error(nvml, err)
            return reading

        def get(call: Callable[..., T], *args: Any) -> T | None:
            return self._get(reading, call, handle, *args)

        uuid = get(nvml.nvmlDeviceGetUUID)
        reading.uuid = _decode(uuid) if uuid is not None else None
        name = get(nvml.nvmlDeviceGetName)
        reading.name = _decode(name) if name is not None else None
        pci = get(nvml.nvmlDeviceGetPciInfo)
        reading.pci_bus_id = normalize_bus_id(_decode(pci.busId)) if pci is not None else None
        memory = get(nvml.nvmlDeviceGetMemoryInfo)
        if memory is not None:
            reading.total_b, reading.used_b, reading.free_b = memory.total, memory.used, memory.free
        rates = get(nvml.nvmlDeviceGetUtilizationRates)
        reading.utilization = float(rates.gpu) if rates is not None else None
        cc = get(nvml.nvmlDeviceGetCudaComputeCapability)
        reading.compute_capability = f"{cc[0]}.{cc[1]}" if cc is not None else None
        temperature = get(nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU)
        reading.temperature_c = float(temperature) if temperature is not None else None
        draw_mw = get(nvml.nvmlDeviceGetPowerUsage)
        reading.power_draw_w = draw_mw / 1000 if draw_mw is not None else None
        limit_mw = get(nvml.nvmlDeviceGetEnforcedPowerLimit)
        reading.power_limit_w = limit_mw / 1000 if limit_mw is not None else None
        reading.max_sm_clock_mhz = get(nvml.nvmlDeviceGetMaxClockInfo, nvml.NVML_CLOCK_SM)
        if reading.fault is None:
            self._read_nvlinks(reading, handle)
        return reading

    def _get(self, reading: _GpuReading, call: Callable[..., T], *args: Any) -> T | None:
        """One NVML query; None when it does not apply, and the GPU's fault noted when it failed."""
        nvml = self._nvml
        try:
            return call(*args)
        except nvml.NVMLError as err:
            if error_code_name(nvml, err.value) not in _ABSENT_ERRORS and reading.fault is None:
                reading.fault = describe_error(nvml, err)
            return None

    def _read_nvlinks(self, reading: _GpuReading, handle: object) -> None:
        nvml = self._nvml
        for link in range(nvml.NVML_NVLINK_MAX_LINKS):
            try:
                if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
                    continue
                if self._remote_is_switch(handle, link):
                    reading.on_nvswitch = True
                    continue
                remote = nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link)
            except nvml.NVMLError as err:
                if error_code_name(nvml, err.value) in _NO_SUCH_LINK_ERRORS:
                    continue
                reading.fault = describe_error(nvml, err)
                return
            reading.nvlink_remotes.add(normalize_bus_id(_decode(remote.busId)))

    def _remote_is_switch(self, handle: object, link: int) -> bool:
        nvml = self._nvml
        get_type = getattr(nvml, "nvmlDeviceGetNvLinkRemoteDeviceType", None)
        if get_type is None:
            return False
        try:
            return bool(get_type(handle, link) == nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH)
        except nvml.NVMLError as err:
            # Older drivers cannot tell; a remote end we cannot classify is looked up as a GPU.
            if error_code_name(nvml, err.value) in _ABSENT_ERRORS:
                return False
            raise


def _to_gpu(
    index: int, r: _GpuReading, index_of_bus: Mapping[str, int], switch_members: tuple[int, ...]
) -> Gpu:
    fp16, bf16 = precision_support(r.compute_capability)
    peers = {index_of_bus[bus] for bus in r.nvlink_remotes if bus in index_of_bus}
    if r.on_nvswitch:
        # Every GPU on the NVSwitch fabric reaches every other one over NVLink.
        peers.update(switch_members)
    peers.discard(index)
    total_mb = r.total_b // _MIB if r.total_b is not None else 0
    used_mb = r.used_b // _MIB if r.used_b is not None else 0
    free_mb = r.free_b // _MIB if r.free_b is not None else max(total_mb - used_mb, 0)
    return Gpu(
        index=index,
        uuid=r.uuid or f"unknown-{index}",
        name=r.name or "unknown",
        pci_bus_id=r.pci_bus_id or "",
        vram_total_mb=total_mb,
        vram_used_mb=used_mb,
        vram_free_mb=free_mb,
        utilization_percent=r.utilization,
        compute_capability=r.compute_capability,
        supports_fp16=fp16,
        supports_bf16=bf16,
        temperature_c=r.temperature_c,
        power_draw_w=r.power_draw_w,
        power_limit_w=r.power_limit_w,
        max_sm_clock_mhz=r.max_sm_clock_mhz,
        nvlink_peers=tuple(sorted(peers)),
        healthy=r.fault is None,
        health_reason=r.fault,
    )


def _import_pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError as err:
        raise BackendUnavailable(
            "NVML: the nvidia-ml-py package (module pynvml) is not installed; pip install nvidia-ml-py"
        ) from err
    return pynvml
