from __future__ import annotations

import pytest

from services.worker.core.device import (
    CPU_SIMULATED_VRAM_MB,
    default_slots,
    default_speed,
    default_worker_id,
    find_gpu,
    make_profile,
    parse_devices,
)
from shared.errors import ConfigError
from tests.builders import make_gpu, make_reference_gpus


@pytest.mark.parametrize(
    ("vram_total_mb", "slots"),
    [
        pytest.param(None, 1, id="unknown (cpu)"),
        pytest.param(0, 1, id="nothing"),
        pytest.param(4094, 1, id="RTX A400 4 GB"),
        pytest.param(12 * 1024 - 1, 1, id="just under 12 GB"),
        pytest.param(12 * 1024, 2, id="12 GB"),
        pytest.param(16384, 2, id="16 GB"),
        pytest.param(20 * 1024 - 1, 2, id="just under 20 GB"),
        pytest.param(20 * 1024, 3, id="20 GB"),
        pytest.param(24564, 3, id="RTX A5500 24 GB"),
        pytest.param(81559, 3, id="H100 80 GB"),
    ],
)
def test_default_slots(vram_total_mb: int | None, slots: int) -> None:
    assert default_slots(vram_total_mb) == slots


@pytest.mark.parametrize(
    ("devices", "device", "expected"),
    [
        pytest.param(None, None, (), id="nothing"),
        pytest.param("", None, (), id="empty list"),
        pytest.param("cuda:0,cuda:1", None, ("cuda:0", "cuda:1"), id="list"),
        pytest.param(" cuda:1 , CUDA:0,,", None, ("cuda:1", "cuda:0"), id="blanks and case, order kept"),
        pytest.param("cuda:0,cuda:00,cuda:0", None, ("cuda:0",), id="duplicates dropped"),
        pytest.param("cpu,cuda:2", None, ("cpu", "cuda:2"), id="cpu"),
        pytest.param(None, "cuda:3", ("cuda:3",), id="one device"),
        pytest.param("cuda:0,cuda:1", "cuda:1", ("cuda:1",), id="one device wins over the list"),
        pytest.param("cuda:0", " ", ("cuda:0",), id="blank device ignored"),
    ],
)
def test_parse_devices(devices: str | None, device: str | None, expected: tuple[str, ...]) -> None:
    assert parse_devices(devices, device) == expected


@pytest.mark.parametrize(
    ("devices", "device", "bad"),
    [
        ("gpu0", None, "'gpu0'"),
        ("cuda:0,tpu:1", None, "'tpu:1'"),
        ("cuda:-1", None, "'cuda:-1'"),
        ("cuda:", None, "'cuda:'"),
        ("cuda:x", None, "'cuda:x'"),
        (None, "cuda 0", "'cuda 0'"),
    ],
)
def test_parse_devices_names_the_bad_entry(devices: str | None, device: str | None, bad: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid device {bad}.*cuda:N.*cpu"):
        parse_devices(devices, device)


@pytest.mark.parametrize(
    ("sm_count", "clock", "speed"),
    [
        (80, 1665, 1.0),
        (160, 1665, 2.0),
        (6, 1762, 6 * 1762 / (80 * 1665)),
        (1, 100, 0.05),
        (1000, 3000, 8.0),
        (None, 1665, 1.0),
        (80, None, 1.0),
    ],
)
def test_default_speed(sm_count: int | None, clock: int | None, speed: float) -> None:
    assert default_speed(sm_count, clock) == pytest.approx(speed)


def test_worker_id_names_host_and_device() -> None:
    assert default_worker_id("box", "cuda:1") == "box-cuda1"
    assert default_worker_id("box", "cpu") == "box-cpu"


def test_profile_from_the_inventory_gpu() -> None:
    a5500, a400 = make_reference_gpus()
    profile = make_profile("cuda:1", a400)
    assert (profile.vram_total_mb, profile.slots, profile.gpu_name) == (4094, 1, "NVIDIA RTX A400")
    assert profile.speed == pytest.approx(6 * 1762 / (80 * 1665))
    used = make_profile("cuda:0", make_gpu(0, vram_used_mb=1024))
    assert (used.vram_used_mb, used.slots, used.speed, used.gpu_index) == (1024, 3, 1.0, 0)


def test_settings_win_over_the_inventory() -> None:
    profile = make_profile("cuda:0", make_gpu(0, vram_used_mb=1024), vram_mb=8192, speed=3.0, slots=5)
    assert (profile.vram_total_mb, profile.vram_used_mb, profile.speed, profile.slots) == (8192, 0, 3.0, 5)


def test_cpu_profile_is_slow_and_simulates_16_gb() -> None:
    profile = make_profile("cpu", None)
    assert (profile.vram_total_mb, profile.speed, profile.slots, profile.gpu_index) == (
        CPU_SIMULATED_VRAM_MB,
        0.1,
        1,
        None,
    )


def test_gpu_without_inventory_needs_vram() -> None:
    with pytest.raises(ConfigError, match="GPUPLANE_VRAM_MB"):
        make_profile("cuda:0", None)
    assert make_profile("cuda:0", None, vram_mb=12288).slots == 2


def test_missing_gpu_names_the_gpus_that_exist() -> None:
    with pytest.raises(ConfigError, match=r"cuda:7 is not a GPU of host box.*cuda:0 \(NVIDIA RTX A5500\), cuda:1"):
        find_gpu("cuda:7", make_reference_gpus(), "box")
    with pytest.raises(ConfigError, match="reports: none"):
        find_gpu("cuda:0", (), "box")
