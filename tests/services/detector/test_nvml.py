"""NVML backend against a fake pynvml built from the real module's errors, constants and structs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

import pynvml
import pytest

from services.detector.backends import open_backend
from services.detector.backends.base import BackendUnavailable
from services.detector.backends.nvml import NvmlBackend
from shared.contracts import Gpu, InventorySource
from shared.errors import DetectionError

GIB = 2**30
MIB = 2**20


@dataclass
class FakeDevice:
    """What NVML would report for one GPU; ``failures`` maps a pynvml function to an error code."""

    uuid: str
    name: str
    bus_id: str
    total_b: int = 24 * GIB
    used_b: int = 0
    free_b: int | None = None
    utilization: int = 0
    cc: tuple[int, int] = (8, 6)
    temperature_c: int = 35
    power_mw: int = 20_000
    limit_mw: int = 230_000
    max_sm_mhz: int = 1665
    link_count: int = 0
    nvlinks: dict[int, str] = field(default_factory=dict)
    """link -> remote PCI bus id; the remote is an NVSwitch when ``on_switch``."""
    on_switch: bool = False
    failures: dict[str, int] = field(default_factory=dict)


def device(n: int, *, name: str = "NVIDIA RTX A5500", bus: int | None = None, **values: Any) -> FakeDevice:
    """GPU number ``n`` (uuid and bus id follow from it); ``values`` override FakeDevice fields."""
    bus_number = n + 1 if bus is None else bus
    base = FakeDevice(
        uuid=f"GPU-{n:08x}-0000-4000-8000-000000000000", name=name, bus_id=f"00000000:{bus_number:02X}:00.0"
    )
    return replace(base, **values)


class FakeNvml:
    """Answers like nvidia-ml-py 12+: str names/uuids, ctypes structs, NVMLError subclasses."""

    def __init__(
        self, devices: list[FakeDevice], *, init_error: int | None = None, count_error: int | None = None
    ):
        self.devices = devices
        self.init_error = init_error
        self.count_error = count_error
        self.shutdowns = 0

    def module(self) -> ModuleType:
        fake = ModuleType("pynvml")
        for name, value in vars(pynvml).items():
            if name.startswith(("NVML_", "NVMLError")):
                setattr(fake, name, value)
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(fake, name, getattr(self, name))
        return fake

    def _check(self, dev: FakeDevice, function: str) -> None:
        code = dev.failures.get(function)
        if code is not None:
            raise pynvml.NVMLError(code)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        if self.count_error is not None:
            raise pynvml.NVMLError(self.count_error)
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        dev = self.devices[index]
        self._check(dev, "nvmlDeviceGetHandleByIndex")
        return dev

    def nvmlDeviceGetUUID(self, dev: FakeDevice) -> str:
        self._check(dev, "nvmlDeviceGetUUID")
        return dev.uuid

    def nvmlDeviceGetName(self, dev: FakeDevice) -> str:
        self._check(dev, "nvmlDeviceGetName")
        return dev.name

    def nvmlDeviceGetPciInfo(self, dev: FakeDevice) -> pynvml.nvmlPciInfo_t:
        self._check(dev, "nvmlDeviceGetPciInfo")
        return _pci(dev.bus_id)

    def nvmlDeviceGetMemoryInfo(self, dev: FakeDevice) -> pynvml.c_nvmlMemory_t:
        self._check(dev, "nvmlDeviceGetMemoryInfo")
        free = dev.total_b - dev.used_b if dev.free_b is None else dev.free_b
        return pynvml.c_nvmlMemory_t(total=dev.total_b, free=free, used=dev.used_b)

    def nvmlDeviceGetUtilizationRates(self, dev: FakeDevice) -> pynvml.c_nvmlUtilization_t:
        self._check(dev, "nvmlDeviceGetUtilizationRates")
        return pynvml.c_nvmlUtilization_t(gpu=dev.utilization, memory=0)

    def nvmlDeviceGetCudaComputeCapability(self, dev: FakeDevice) -> tuple[int, int]:
        self._check(dev, "nvmlDeviceGetCudaComputeCapability")
        return dev.cc

    def nvmlDeviceGetTemperature(self, dev: FakeDevice, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        self._check(dev, "nvmlDeviceGetTemperature")
        return dev.temperature_c

    def nvmlDeviceGetPowerUsage(self, dev: FakeDevice) -> int:
        self._check(dev, "nvmlDeviceGetPowerUsage")
        return dev.power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, dev: FakeDevice) -> int:
        self._check(dev, "nvmlDeviceGetEnforcedPowerLimit")
        return dev.limit_mw

    def nvmlDeviceGetMaxClockInfo(self, dev: FakeDevice, clock: int) -> int:
        assert clock == pynvml.NVML_CLOCK_SM
        self._check(dev, "nvmlDeviceGetMaxClockInfo")
        return dev.max_sm_mhz

    def nvmlDeviceGetNvLinkState(self, dev: FakeDevice, link: int) -> int:
        self._check(dev, "nvmlDeviceGetNvLinkState")
        if dev.link_count == 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if link >= dev.link_count:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return pynvml.NVML_FEATURE_ENABLED if link in dev.nvlinks else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, dev: FakeDevice, link: int) -> int:
        return pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH if dev.on_switch else pynvml.NVML_NVLINK_DEVICE_TYPE_GPU

    def nvmlDeviceGetNvLinkRemotePciInfo(self, dev: FakeDevice, link: int) -> pynvml.nvmlPciInfo_t:
        return _pci(dev.nvlinks[link])


def _pci(bus_id: str) -> pynvml.nvmlPciInfo_t:
    info = pynvml.nvmlPciInfo_t()
    info.busId = bus_id.encode()
    return info


def nvlink_pair() -> list[FakeDevice]:
    # A 3090 has four NVLink links; a bridge uses all of them.
    first = device(0, name="NVIDIA GeForce RTX 3090", link_count=4, limit_mw=350_000)
    second = device(1, name="NVIDIA GeForce RTX 3090", link_count=4, limit_mw=350_000)
    first.nvlinks = dict.fromkeys(range(4), second.bus_id)
    second.nvlinks = dict.fromkeys(range(4), first.bus_id)
    return [first, second]


def nvswitch_box(count: int) -> list[FakeDevice]:
    return [
        device(
            n,
            name="NVIDIA H100 80GB HBM3",
            cc=(9, 0),
            link_count=18,
            on_switch=True,
            nvlinks=dict.fromkeys(range(18), "00000000:C0:00.0"),
        )
        for n in range(count)
    ]


def scan_with(devices: list[FakeDevice]) -> tuple[Gpu, ...]:
    backend = NvmlBackend.open(host="box-a", nvml_module=FakeNvml(devices).module())
    (host_scan,) = backend.scan()
    assert (host_scan.host, host_scan.source) == ("box-a", InventorySource.NVML)
    return host_scan.gpus


LOST = pynvml.NVML_ERROR_GPU_IS_LOST
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
UNKNOWN = pynvml.NVML_ERROR_UNKNOWN


A5500 = "NVIDIA RTX A5500"
A400 = "NVIDIA RTX A400"
RTX3090 = "NVIDIA GeForce RTX 3090"
H100 = "NVIDIA H100 80GB HBM3"


def uid(n: int) -> str:
    return f"GPU-{n:08x}-0000-4000-8000-000000000000"


def bus(n: int) -> str:
    return f"00000000:{n:02X}:00.0"


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        pytest.param(
            [
                device(0, used_b=1024 * MIB, utilization=7),
                device(1, name=A400, total_b=4094 * MIB, limit_mw=50_000, max_sm_mhz=1762),
            ],
            [(0, uid(0), A5500, bus(1), (), True, None), (1, uid(1), A400, bus(2), (), True, None)],
            id="two GPUs",
        ),
        pytest.param(
            nvlink_pair(),
            [(0, uid(0), RTX3090, bus(1), (1,), True, None), (1, uid(1), RTX3090, bus(2), (0,), True, None)],
            id="NVLink pair",
        ),
        pytest.param(
            [device(0, bus=0x41), device(1, bus=0x09, name=A400)],
            [(0, uid(1), A400, bus(0x09), (), True, None), (1, uid(0), A5500, bus(0x41), (), True, None)],
            id="enumerated out of bus order are re-sorted",
        ),
        pytest.param(
            [
                device(0),
                device(1, failures={"nvmlDeviceGetMemoryInfo": LOST, "nvmlDeviceGetTemperature": LOST}),
            ],
            [
                (0, uid(0), A5500, bus(1), (), True, None),
                (1, uid(1), A5500, bus(2), (), False, "NVML: GPU is lost (NVML_ERROR_GPU_IS_LOST)"),
            ],
            id="GPU lost mid-scan keeps what was read",
        ),
        pytest.param(
            [device(0), device(1, failures={"nvmlDeviceGetHandleByIndex": UNKNOWN})],
            [
                (0, uid(0), A5500, bus(1), (), True, None),
                (1, "unknown-1", "unknown", "", (), False, "NVML: Unknown Error (NVML_ERROR_UNKNOWN)"),
            ],
            id="no handle at all",
        ),
        pytest.param(
            [
                device(0, bus=0x41, name=RTX3090, link_count=4, nvlinks=dict.fromkeys(range(4), bus(0x09))),
                device(
                    1, bus=0x09, name=RTX3090, link_count=4, nvlinks=dict.fromkeys(range(4), "0000:41:00.0")
                ),
            ],
            [
                (0, uid(1), RTX3090, bus(0x09), (1,), True, None),
                (1, uid(0), RTX3090, bus(0x41), (0,), True, None),
            ],
            id="NVLink peers follow the re-sorted indices",
        ),
        pytest.param(
            nvswitch_box(4),
            [
                (n, uid(n), H100, bus(n + 1), tuple(p for p in range(4) if p != n), True, None)
                for n in range(4)
            ],
            id="NVSwitch makes every GPU a peer",
        ),
    ],
)
def test_scan(devices: list[FakeDevice], expected: list[tuple[object, ...]]) -> None:
    gpus = scan_with(devices)
    assert [
        (g.index, g.uuid, g.name, g.pci_bus_id, g.nvlink_peers, g.healthy, g.health_reason) for g in gpus
    ] == expected


def test_values_are_converted() -> None:
    (gpu,) = scan_with(
        [
            device(
                0,
                total_b=24564 * MIB,
                used_b=1024 * MIB + 12345,
                free_b=23000 * MIB,
                utilization=42,
                temperature_c=61,
                power_mw=123_456,
                limit_mw=230_000,
                max_sm_mhz=1665,
                cc=(8, 6),
            )
        ]
    )
    assert gpu.model_dump(
        include={
            "vram_total_mb",
            "vram_used_mb",
            "vram_free_mb",
            "utilization_percent",
            "compute_capability",
            "supports_fp16",
            "supports_bf16",
            "temperature_c",
            "power_draw_w",
            "power_limit_w",
            "max_sm_clock_mhz",
            "sm_count",
        }
    ) == {
        "vram_total_mb": 24564,
        "vram_used_mb": 1024,
        "vram_free_mb": 23000,
        "utilization_percent": 42.0,
        "compute_capability": "8.6",
        "supports_fp16": True,
        "supports_bf16": True,
        "temperature_c": 61.0,
        "power_draw_w": 123.456,
        "power_limit_w": 230.0,
        "max_sm_clock_mhz": 1665,
        "sm_count": None,
    }


@pytest.mark.parametrize(
    ("cc", "fp16", "bf16"),
    [((6, 1), True, False), ((7, 5), True, False), ((8, 0), True, True), ((5, 2), False, False)],
)
def test_precision_follows_compute_capability(cc: tuple[int, int], fp16: bool, bf16: bool) -> None:
    (gpu,) = scan_with([device(0, cc=cc)])
    assert (gpu.compute_capability, gpu.supports_fp16, gpu.supports_bf16) == (f"{cc[0]}.{cc[1]}", fp16, bf16)


def test_not_supported_fields_become_none() -> None:
    unsupported = dict.fromkeys(
        [
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetTemperature",
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetEnforcedPowerLimit",
            "nvmlDeviceGetMaxClockInfo",
            "nvmlDeviceGetCudaComputeCapability",
        ],
        NOT_SUPPORTED,
    )
    (gpu,) = scan_with([device(0, failures=unsupported)])
    assert (gpu.healthy, gpu.health_reason) == (True, None)
    assert (
        gpu.utilization_percent,
        gpu.temperature_c,
        gpu.power_draw_w,
        gpu.power_limit_w,
        gpu.max_sm_clock_mhz,
        gpu.compute_capability,
        gpu.supports_fp16,
        gpu.supports_bf16,
    ) == (None, None, None, None, None, None, False, False)


def test_a_gpu_that_stops_answering_keeps_its_identity() -> None:
    devices = [device(0), device(1)]
    fake = FakeNvml(devices)
    backend = NvmlBackend.open(host="box-a", nvml_module=fake.module())
    backend.scan()
    devices[1].failures["nvmlDeviceGetHandleByIndex"] = LOST
    (host_scan,) = backend.scan()
    lost = host_scan.gpus[1]
    assert (lost.uuid, lost.name, lost.pci_bus_id, lost.healthy) == (
        devices[1].uuid,
        devices[1].name,
        devices[1].bus_id,
        False,
    )


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (
            pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
            ["NVML: Driver Not Loaded (NVML_ERROR_DRIVER_NOT_LOADED)", "lsmod"],
        ),
        (
            pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
            [
                "NVML: NVML Shared Library Not Found (NVML_ERROR_LIBRARY_NOT_FOUND)",
                "install the NVIDIA driver",
            ],
        ),
        (pynvml.NVML_ERROR_NO_PERMISSION, ["Insufficient Permissions", "/dev/nvidia"]),
        (pynvml.NVML_ERROR_UNKNOWN, ["NVML: Unknown Error (NVML_ERROR_UNKNOWN)"]),
    ],
)
def test_init_failure_is_unavailable(code: int, words: list[str]) -> None:
    with pytest.raises(BackendUnavailable) as raised:
        open_backend("nvml", host="box-a", nvml_module=FakeNvml([], init_error=code).module())
    for word in words:
        assert word in str(raised.value)


def test_count_failure_fails_the_scan() -> None:
    backend = NvmlBackend.open(
        host="box-a", nvml_module=FakeNvml([], count_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED).module()
    )
    with pytest.raises(DetectionError, match="Driver Not Loaded"):
        backend.scan()


def test_close_shuts_nvml_down_once() -> None:
    fake = FakeNvml([device(0)])
    backend = NvmlBackend.open(host="box-a", nvml_module=fake.module())
    backend.close()
    backend.close()
    assert fake.shutdowns == 1


def test_real_pynvml_on_this_machine() -> None:
    """No driver here: a clear BackendUnavailable. On a GPU machine: a real scan instead."""
    try:
        backend = open_backend("nvml", host="this-host")
    except BackendUnavailable as err:
        assert str(err).startswith("NVML: ")
        assert "NVML_ERROR_" in str(err)
        return
    try:
        (host_scan,) = backend.scan()
        assert host_scan.gpus, "NVML initialised but reported no GPU"
        assert all(gpu.uuid.startswith("GPU-") for gpu in host_scan.gpus)
    finally:
        backend.close()
