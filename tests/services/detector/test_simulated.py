"""Simulated backend: the shipped fleet files, live edits, and bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from services.detector.backends.simulated import SimulatedBackend, load_fleet
from shared.contracts import InventorySource
from shared.errors import ConfigError, DetectionError

REPO = Path(__file__).resolve().parents[3]
FLEETS = sorted((REPO / "deploy" / "fleets").glob("*.yaml"))


def write_fleet(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def touch_later(path: Path) -> None:
    # Some filesystems keep coarse mtimes; move it forward so the change is always seen.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def gpu(index: int, **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "index": index,
        "name": "NVIDIA GeForce RTX 3090",
        "vram_total_mb": 24576,
        "compute_capability": "8.6",
        "power_limit_w": 350,
    }
    base.update(overrides)
    return base


def test_fleet_files_are_shipped() -> None:
    assert {path.name for path in FLEETS} >= {
        "reference.yaml",
        "dual-3090-nvlink.yaml",
        "8x-h100.yaml",
        "two-hosts.yaml",
    }


@pytest.mark.parametrize("path", FLEETS, ids=[path.name for path in FLEETS])
def test_every_shipped_fleet_loads(path: Path) -> None:
    assert path.read_text(encoding="utf-8").startswith("#"), "each fleet file explains itself in a header"
    scans = SimulatedBackend(path, host="this-host").scan()
    assert scans
    for scan in scans:
        assert scan.source is InventorySource.SIMULATED
        assert scan.fleet_file == str(path)
        assert scan.gpus
        assert [g.index for g in scan.gpus] == sorted(g.index for g in scan.gpus)
        uuids = [g.uuid for g in scan.gpus]
        assert len(set(uuids)) == len(uuids)
        assert all(len(u.split("-")) == 6 and u.startswith("GPU-") for u in uuids)
        for g in scan.gpus:
            assert g.vram_free_mb == g.vram_total_mb - g.vram_used_mb
            assert all(
                scan.gpus[p].index == p and g.index in scan.gpus[p].nvlink_peers for p in g.nvlink_peers
            )


def test_reference_fleet() -> None:
    (scan,) = SimulatedBackend(REPO / "deploy/fleets/reference.yaml", host="workstation").scan()
    assert scan.host == "workstation"
    assert [
        (
            g.index,
            g.name,
            g.pci_bus_id,
            g.vram_total_mb,
            g.power_limit_w,
            g.compute_capability,
            g.sm_count,
            g.max_sm_clock_mhz,
            g.supports_fp16,
            g.supports_bf16,
            g.nvlink_peers,
            g.healthy,
        )
        for g in scan.gpus
    ] == [
        (0, "NVIDIA RTX A5500", "00000000:01:00.0", 24564, 230.0, "8.6", 80, 1665, True, True, (), True),
        (1, "NVIDIA RTX A400", "00000000:02:00.0", 4094, 50.0, "8.6", 6, 1762, True, True, (), True),
    ]
    a5500 = scan.gpus[0]
    assert a5500.vram_used_mb > 0
    assert a5500.vram_free_mb == a5500.vram_total_mb - a5500.vram_used_mb


@pytest.mark.parametrize(
    ("fleet", "expected"),
    [
        ("dual-3090-nvlink.yaml", {"this-host": [(1,), (0,)]}),
        ("8x-h100.yaml", {"this-host": [tuple(p for p in range(8) if p != i) for i in range(8)]}),
        ("two-hosts.yaml", {"box-a": [(), ()], "box-b": [(1,), (0,)]}),
    ],
)
def test_nvlink_fleets(fleet: str, expected: dict[str, list[tuple[int, ...]]]) -> None:
    scans = SimulatedBackend(REPO / "deploy/fleets" / fleet, host="this-host").scan()
    assert {scan.host: [g.nvlink_peers for g in scan.gpus] for scan in scans} == expected


def test_defaults_are_deterministic(tmp_path: Path) -> None:
    path = write_fleet(tmp_path / "fleet.yaml", {"gpus": [gpu(0), gpu(1)]})
    first = SimulatedBackend(path, host="box").scan()[0].gpus
    again = SimulatedBackend(path, host="box").scan()[0].gpus
    elsewhere = SimulatedBackend(path, host="other-box").scan()[0].gpus
    assert [g.uuid for g in first] == [g.uuid for g in again]
    assert not {g.uuid for g in first} & {g.uuid for g in elsewhere}
    assert [g.pci_bus_id for g in first] == ["00000000:01:00.0", "00000000:02:00.0"]
    assert [(g.vram_used_mb, g.utilization_percent, g.healthy) for g in first] == [(0, 0.0, True)] * 2


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(
            {"gpus": [gpu(0), gpu(1, healthy=False, health_reason="Xid 79: fell off the bus")]},
            [(0, True, None), (1, False, "Xid 79: fell off the bus")],
            id="a GPU turns unhealthy",
        ),
        pytest.param(
            {"gpus": [gpu(0), gpu(1, healthy=False)]},
            [(0, True, None), (1, False, "marked unhealthy in the fleet file")],
            id="unhealthy without a reason",
        ),
        pytest.param({"gpus": [gpu(0)]}, [(0, True, None)], id="a GPU disappears"),
    ],
)
def test_editing_the_file_changes_the_next_scan(
    tmp_path: Path, edit: dict[str, object], expected: list[tuple[int, bool, str | None]]
) -> None:
    path = write_fleet(tmp_path / "fleet.yaml", {"gpus": [gpu(0), gpu(1)]})
    backend = SimulatedBackend(path, host="box")
    before = backend.scan()[0].gpus
    write_fleet(path, edit)
    touch_later(path)
    after = backend.scan()[0].gpus
    assert [(g.index, g.healthy, g.health_reason) for g in after] == expected
    assert {g.uuid for g in after} <= {g.uuid for g in before}


def test_a_broken_edit_fails_scans_until_fixed(tmp_path: Path) -> None:
    path = write_fleet(tmp_path / "fleet.yaml", {"gpus": [gpu(0)]})
    backend = SimulatedBackend(path, host="box")
    path.write_text("gpus:\n  - index: 0\n    name: [unclosed\n", encoding="utf-8")
    touch_later(path)
    with pytest.raises(DetectionError, match="not valid YAML"):
        backend.scan()
    with pytest.raises(DetectionError, match="not valid YAML"):
        backend.scan()
    write_fleet(path, {"gpus": [gpu(0), gpu(1)]})
    touch_later(path)
    assert len(backend.scan()[0].gpus) == 2


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param({"gpus": [gpu(0, vram_mb=1)]}, ["gpus.0.vram_mb", "Extra inputs"], id="unknown key"),
        pytest.param(
            {"gpus": [{k: v for k, v in gpu(0).items() if k != "vram_total_mb"}]},
            ["gpus.0.vram_total_mb", "Field required"],
            id="missing field",
        ),
        pytest.param(
            {"gpus": [gpu(0, compute_capability="eight")]},
            ["gpus.0.compute_capability"],
            id="bad compute cap",
        ),
        pytest.param(
            {"gpus": [gpu(0, vram_used_mb=30000)]}, ["gpus.0", "exceeds vram_total_mb"], id="overfull"
        ),
        pytest.param({"gpus": [gpu(0), gpu(0)]}, ["indices must be unique"], id="duplicate index"),
        pytest.param(
            {"gpus": [gpu(0, nvlink_peers=[3])]}, ["nvlink_peers names 3"], id="peer that is not there"
        ),
        pytest.param(
            {"hosts": [{"name": "a", "gpus": [gpu(0)]}, {"name": "a", "gpus": [gpu(0)]}]},
            ["host names must be unique"],
            id="duplicate host",
        ),
        pytest.param(
            {"hosts": [{"gpus": [gpu(0)]}]}, ["hosts.0.name", "Field required"], id="host without name"
        ),
        pytest.param({"gpus": [gpu(0)], "hosts": []}, ["either 'gpus'"], id="both layouts"),
        pytest.param({"gpu": [gpu(0)]}, ["gpu", "Extra inputs"], id="misspelt top level"),
        pytest.param(["not", "a", "mapping"], ["expected a mapping"], id="a list"),
    ],
)
def test_bad_files_name_the_file_and_field(tmp_path: Path, content: object, words: list[str]) -> None:
    path = write_fleet(tmp_path / "bad.yaml", content)
    with pytest.raises(ConfigError) as raised:
        load_fleet(path)
    message = str(raised.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        SimulatedBackend(tmp_path / "nope.yaml", host="box")
