"""nvidia-smi parsers on real captured output (tests/services/detector/fixtures), and the backend."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.detector.backends import open_backend
from services.detector.backends.base import BackendUnavailable
from services.detector.backends.smi import (
    QUERY_FIELDS,
    SmiBackend,
    SmiCommandFailed,
    parse_query_csv,
    parse_topo_matrix,
    run_command,
)
from shared.contracts import Gpu, InventorySource
from shared.errors import DetectionError
from tests.services.detector.fixtures import load

QUADRO_FIELDS = ("name", "memory.total", "driver_version", "pci.device_id")
RTX2080_FIELDS = (
    "power.limit",
    "power.min_limit",
    "power.max_limit",
    "memory.total",
    "vbios_version",
    "driver_version",
    "name",
    "gpu_uuid",
    "power.draw",
    "temperature.gpu",
    "temperature.memory",
    "clocks.current.graphics",
    "clocks.sm",
    "clocks.mem",
    "utilization.gpu",
    "utilization.memory",
    "fan.speed",
    "pcie.link.width.current",
    "pstate",
)
LOST_FIELDS = ("index", "pci.bus_id", "name")

# The real message format of an unknown field; see plambe/zabbix-nvidia-smi-multi-gpu#17.
NO_COMPUTE_CAP = 'Field "compute_cap" is not a valid field to query.'
# What nvidia-smi prints when the driver is gone; see utkuozdemir/nvidia_gpu_exporter#65.
NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


def summary(gpus: list[Gpu] | tuple[Gpu, ...]) -> list[tuple[object, ...]]:
    return [(g.index, g.uuid, g.name, g.pci_bus_id, g.vram_total_mb, g.healthy) for g in gpus]


# --------------------------------------------------------------------------- topo -m


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("topo_4x_h100_nv6.txt", {0: (1, 2, 3), 1: (0, 2, 3), 2: (0, 1, 3), 3: (0, 1, 2)}),
        ("topo_8x_rtx4090_sys.txt", {i: () for i in range(8)}),
        ("topo_2x_rtx5090_phb.txt", {0: (), 1: ()}),
        ("topo_1x_h100.txt", {0: ()}),
    ],
)
def test_parse_topo_matrix(fixture: str, expected: dict[int, tuple[int, ...]]) -> None:
    assert parse_topo_matrix(load(fixture)) == expected


def test_parse_topo_matrix_of_nothing() -> None:
    assert parse_topo_matrix("") == {}


# --------------------------------------------------------------------------- --query-gpu


def test_parse_header_with_units_and_na() -> None:
    (gpu,) = parse_query_csv(load("query_h100_header_units.csv"))
    assert gpu.model_dump(exclude={"nvlink_peers", "sm_count", "health_reason"}) == {
        "index": 0,
        "uuid": "GPU-00000000-0000-0000-0000-000000000000",
        "name": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": "00000000:00:09.0",
        "vram_total_mb": 81559,
        "vram_used_mb": 0,
        "vram_free_mb": 81081,
        "utilization_percent": 0.0,
        "compute_capability": "9.0",
        "supports_fp16": True,
        "supports_bf16": True,
        "temperature_c": 41.0,
        "power_draw_w": 69.85,
        "power_limit_w": 700.0,
        "max_sm_clock_mhz": 1980,
        "healthy": True,
    }


def test_parse_two_gpus_without_header_with_units() -> None:
    gpus = parse_query_csv(load("query_2x_quadro_rtx6000_noheader_units.csv"), QUADRO_FIELDS)
    assert summary(gpus) == [
        (0, "unknown-0", "Quadro RTX 6000", "", 24576, True),
        (1, "unknown-1", "Quadro RTX 6000", "", 24576, True),
    ]
    assert [(g.vram_used_mb, g.vram_free_mb) for g in gpus] == [(0, 24576), (0, 24576)]


def test_parse_nounits_with_bare_na() -> None:
    (gpu,) = parse_query_csv(load("query_rtx2080_noheader_nounits.csv"), RTX2080_FIELDS)
    assert (gpu.index, gpu.uuid, gpu.name, gpu.vram_total_mb) == (
        0,
        "GPU-22b2c6ac-2d49-4863-197c-9c469071178a",
        "GeForce RTX 2080",
        7979,
    )
    assert (gpu.power_draw_w, gpu.power_limit_w, gpu.temperature_c, gpu.utilization_percent) == (
        176.98,
        200.0,
        45.0,
        86.0,
    )
    assert (gpu.compute_capability, gpu.supports_fp16, gpu.max_sm_clock_mhz) == (None, False, None)


def test_parse_a_gpu_whose_handle_is_lost() -> None:
    gpus = parse_query_csv(load("query_8x_rtx3080_lost_gpu.txt"), LOST_FIELDS)
    assert [g.index for g in gpus] == list(range(8))
    assert [g.pci_bus_id for g in gpus] == [f"00000000:{n:02X}:00.0" for n in range(1, 9)]
    lost = gpus[3]
    assert (lost.uuid, lost.healthy) == ("unknown-3", False)
    assert lost.health_reason is not None and "Unknown Error" in lost.health_reason
    assert all(g.healthy for g in gpus if g.index != 3)


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        pytest.param(
            [
                "0",
                "GPU-x",
                "NVIDIA RTX A400",
                "00000000:02:00.0",
                "4094",
                "10",
                "4084",
                "0",
                "8.6",
                "33",
                "7.01",
                "50.00",
                "1762",
            ],
            (4094, 10, 4084, 0.0, "8.6", 33.0, 7.01, 50.0, 1762, True, None),
            id="nounits",
        ),
        pytest.param(
            [
                "0",
                "GPU-x",
                "NVIDIA RTX A400",
                "00000000:02:00.0",
                "4094 MiB",
                "10 MiB",
                "4084 MiB",
                "0 %",
                "8.6",
                "33",
                "7.01 W",
                "50.00 W",
                "1762 MHz",
            ],
            (4094, 10, 4084, 0.0, "8.6", 33.0, 7.01, 50.0, 1762, True, None),
            id="units",
        ),
        pytest.param(
            [
                "0",
                "GPU-x",
                "NVIDIA RTX A400",
                "00000000:02:00.0",
                "4094",
                "10",
                "4084",
                "[N/A]",
                "[N/A]",
                "N/A",
                "[Not Supported]",
                "[N/A]",
                "[N/A]",
            ],
            (4094, 10, 4084, None, None, None, None, None, None, True, None),
            id="not available",
        ),
        pytest.param(
            [
                "0",
                "GPU-x",
                "NVIDIA RTX A400",
                "00000000:02:00.0",
                "4094",
                "10",
                "4084",
                "[GPU is lost]",
                "8.6",
                "[GPU is lost]",
                "[Unknown Error]",
                "50.00",
                "1762",
            ],
            (
                4094,
                10,
                4084,
                None,
                "8.6",
                None,
                None,
                50.0,
                1762,
                False,
                "nvidia-smi: GPU is lost (utilization.gpu); GPU is lost (temperature.gpu); "
                "Unknown Error (power.draw)",
            ),
            id="lost",
        ),
    ],
)
def test_value_rules(cells: list[str], expected: tuple[object, ...]) -> None:
    """The value-cleaning rules on one row in the backend's own column order."""
    (gpu,) = parse_query_csv(", ".join(cells))
    assert (
        gpu.vram_total_mb,
        gpu.vram_used_mb,
        gpu.vram_free_mb,
        gpu.utilization_percent,
        gpu.compute_capability,
        gpu.temperature_c,
        gpu.power_draw_w,
        gpu.power_limit_w,
        gpu.max_sm_clock_mhz,
        gpu.healthy,
        gpu.health_reason,
    ) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("0, GPU-x, NVIDIA RTX A400", "expected 13 values per GPU, got 3"),
        (
            "0, GPU-x, A, 00000000:02:00.0, lots, 0, 0, 0, 8.6, 33, 7, 50, 1762",
            "expected a number, got 'lots'",
        ),
    ],
)
def test_rows_that_do_not_fit_fail_the_parse(text: str, error: str) -> None:
    with pytest.raises(DetectionError, match=error):
        parse_query_csv(text)


def test_no_devices() -> None:
    assert parse_query_csv("No devices were found\n") == []


# --------------------------------------------------------------------------- backend


class FakeRunner:
    """Answers argv by its second word (the query or ``topo``); an Exception answer is raised."""

    def __init__(self, query: str | Exception | list[str | Exception], topo: str | Exception = "") -> None:
        self.queries = query if isinstance(query, list) else [query]
        self.topo = topo
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        if argv[1] == "topo":
            answer: str | Exception = self.topo
        else:
            answer = self.queries.pop(0) if len(self.queries) > 1 else self.queries[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_backend_scans_with_the_documented_commands() -> None:
    runner = FakeRunner(load("query_h100_header_units.csv"), load("topo_1x_h100.txt"))
    backend = open_backend("nvidia-smi", host="gpu-box", nvidia_smi="/usr/bin/nvidia-smi", runner=runner)
    (host_scan,) = backend.scan()
    assert (backend.NAME, host_scan.host, host_scan.source, host_scan.problems) == (
        "nvidia-smi",
        "gpu-box",
        InventorySource.NVIDIA_SMI,
        (),
    )
    assert summary(host_scan.gpus) == [
        (
            0,
            "GPU-00000000-0000-0000-0000-000000000000",
            "NVIDIA H100 80GB HBM3",
            "00000000:00:09.0",
            81559,
            True,
        )
    ]
    assert runner.calls[0] == [
        "/usr/bin/nvidia-smi",
        "--query-gpu=" + ",".join(QUERY_FIELDS),
        "--format=csv,noheader,nounits",
    ]
    assert ["/usr/bin/nvidia-smi", "topo", "-m"] in runner.calls


def test_backend_maps_nvlink_peers_to_listed_gpus() -> None:
    """Wiring only: a 2-GPU listing with a 4-GPU NV6 matrix keeps the peers that exist."""
    runner = FakeRunner(load("query_2x_quadro_rtx6000_noheader_units.csv"), load("topo_4x_h100_nv6.txt"))
    backend = SmiBackend(host="h", binary="nvidia-smi", runner=runner, fields=QUADRO_FIELDS)
    (host_scan,) = backend.scan()
    assert [g.nvlink_peers for g in host_scan.gpus] == [(1,), (0,)]


def test_topology_is_read_once_per_gpu_set() -> None:
    runner = FakeRunner(load("query_h100_header_units.csv"), load("topo_1x_h100.txt"))
    backend = SmiBackend.open(host="h", runner=runner)
    backend.scan()
    backend.scan()
    assert sum(1 for argv in runner.calls if argv[1] == "topo") == 1


def test_topology_failure_is_a_problem_not_a_failure() -> None:
    failure = SmiCommandFailed(["nvidia-smi", "topo", "-m"], 2, "Topology not supported")
    runner = FakeRunner(load("query_h100_header_units.csv"), failure)
    (host_scan,) = SmiBackend.open(host="h", runner=runner).scan()
    assert [g.nvlink_peers for g in host_scan.gpus] == [()]
    assert len(host_scan.problems) == 1
    assert "NVLink peers are unknown" in host_scan.problems[0]
    assert "Topology not supported" in host_scan.problems[0]


def test_old_driver_without_compute_cap_is_asked_again() -> None:
    refused = SmiCommandFailed(["nvidia-smi"], 2, NO_COMPUTE_CAP)
    runner = FakeRunner([refused, load("query_rtx2080_noheader_nounits.csv")], load("topo_1x_h100.txt"))
    backend = SmiBackend(
        host="h", binary="nvidia-smi", runner=runner, fields=(*RTX2080_FIELDS, "compute_cap")
    )
    (host_scan,) = backend.scan()
    assert "compute_cap" in runner.calls[0][1]
    assert "compute_cap" not in runner.calls[1][1]
    assert host_scan.gpus[0].compute_capability is None
    assert any("compute capability" in problem for problem in host_scan.problems)


@pytest.mark.parametrize(
    ("binary", "message"),
    [
        ("nvidia-smi-that-is-not-installed", "nvidia-smi: not found on PATH"),
        ("/nonexistent/bin/nvidia-smi", "nvidia-smi: /nonexistent/bin/nvidia-smi does not exist"),
    ],
)
def test_missing_binary(binary: str, message: str) -> None:
    with pytest.raises(BackendUnavailable, match=message):
        open_backend("nvidia-smi", host="h", nvidia_smi=binary)


def fake_nvidia_smi(tmp_path: Path, script: str) -> str:
    """A stand-in binary: a shell script, so the real subprocess path is exercised."""
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_driver_gone_makes_nvidia_smi_unavailable(tmp_path: Path) -> None:
    binary = fake_nvidia_smi(tmp_path, f'echo "{NO_DRIVER}"\nexit 9\n')
    with pytest.raises(BackendUnavailable, match="couldn't communicate with the NVIDIA driver"):
        open_backend("nvidia-smi", host="h", nvidia_smi=binary)


def test_run_command_keeps_a_lost_gpu_reported_on_stderr(tmp_path: Path) -> None:
    text = load("query_8x_rtx3080_lost_gpu.txt").splitlines()
    stdout = "\\n".join(text[1:])
    binary = fake_nvidia_smi(tmp_path, f"printf '{stdout}\\n'\necho '{text[0]}' >&2\nexit 15\n")
    output = run_command([binary, "--query-gpu=index,pci.bus_id,name", "--format=csv,noheader"])
    gpus = parse_query_csv(output, LOST_FIELDS)
    assert [(g.index, g.healthy) for g in gpus] == [(n, n != 3) for n in range(8)]


def test_run_command_failure_carries_the_output(tmp_path: Path) -> None:
    binary = fake_nvidia_smi(tmp_path, "echo 'boom' >&2\nexit 3\n")
    with pytest.raises(SmiCommandFailed) as raised:
        run_command([binary, "-L"])
    assert (raised.value.returncode, raised.value.output) == (3, "boom")
