from __future__ import annotations

from datetime import timedelta

import pytest

from services.detector.backends.base import HostScan
from services.detector.core import PublishDecider, diff_gpus, precision_support
from shared.contracts import Gpu, InventoryChangeKind, InventorySource
from tests.builders import FIXED_TIME, make_gpu

A = make_gpu(0, uuid="GPU-a")
B = make_gpu(1, uuid="GPU-b", name="NVIDIA RTX A400")
B_LOST = make_gpu(1, uuid="GPU-b", name="NVIDIA RTX A400", healthy=False, health_reason="NVML: GPU is lost")
C = make_gpu(1, uuid="GPU-c", name="NVIDIA GeForce RTX 3090")

APPEARED = InventoryChangeKind.APPEARED
DISAPPEARED = InventoryChangeKind.DISAPPEARED
UNHEALTHY = InventoryChangeKind.UNHEALTHY
RECOVERED = InventoryChangeKind.RECOVERED


def make_scan(*gpus: Gpu, host: str = "box-a", problems: tuple[str, ...] = ()) -> HostScan:
    return HostScan(host=host, source=InventorySource.SIMULATED, gpus=gpus, problems=problems)


@pytest.mark.parametrize(
    ("compute_capability", "expected"),
    [
        (None, (False, False)),
        ("", (False, False)),
        ("banana", (False, False)),
        ("5.2", (False, False)),
        ("5.3", (True, False)),
        ("6.1", (True, False)),
        ("7.5", (True, False)),
        ("8.0", (True, True)),
        ("8.6", (True, True)),
        ("9.0", (True, True)),
        ("12.0", (True, True)),
    ],
)
def test_precision_support(compute_capability: str | None, expected: tuple[bool, bool]) -> None:
    assert precision_support(compute_capability) == expected


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        pytest.param(None, (A, B), [], id="first scan has no baseline"),
        pytest.param((A, B), (A, B), [], id="nothing changed"),
        pytest.param(
            (A, B),
            (make_gpu(0, uuid="GPU-a", vram_used_mb=20000, utilization_percent=99.0, temperature_c=80.0), B),
            [],
            id="load and memory moving are not changes",
        ),
        pytest.param((A,), (A, B), [(APPEARED, "GPU-b", 1, None)], id="appeared"),
        pytest.param((A, B), (A,), [(DISAPPEARED, "GPU-b", 1, None)], id="disappeared"),
        pytest.param((A, B), (A, B_LOST), [(UNHEALTHY, "GPU-b", 1, "NVML: GPU is lost")], id="unhealthy"),
        pytest.param((A, B_LOST), (A, B), [(RECOVERED, "GPU-b", 1, None)], id="recovered"),
        pytest.param((A, B_LOST), (A, B_LOST), [], id="still unhealthy is not news"),
        pytest.param(
            (A, B), (A, C), [(APPEARED, "GPU-c", 1, None), (DISAPPEARED, "GPU-b", 1, None)], id="swapped card"
        ),
        pytest.param(
            (A, B),
            (make_gpu(0, uuid="GPU-a", healthy=False, health_reason="x"),),
            [(UNHEALTHY, "GPU-a", 0, "x"), (DISAPPEARED, "GPU-b", 1, None)],
            id="ordered by index",
        ),
        pytest.param(
            (),
            (B_LOST,),
            [(APPEARED, "GPU-b", 1, "NVML: GPU is lost")],
            id="appearing unhealthy keeps the reason",
        ),
    ],
)
def test_diff_gpus(
    previous: tuple[Gpu, ...] | None,
    current: tuple[Gpu, ...],
    expected: list[tuple[InventoryChangeKind, str, int, str | None]],
) -> None:
    changes = diff_gpus(previous, current)
    assert [(c.kind, c.uuid, c.index, c.reason) for c in changes] == expected


def test_diff_names_the_gpu() -> None:
    (change,) = diff_gpus((A,), (A, B))
    assert change.name == "NVIDIA RTX A400"


# Each step: (scan, now_s, forced) -> expected (sequence, change kinds) or None when not published.
Step = tuple[HostScan, float, bool, tuple[int, tuple[InventoryChangeKind, ...]] | None]


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([(make_scan(A, B), 0.0, False, (1, ()))], id="first scan publishes"),
        pytest.param(
            [
                (make_scan(A, B), 0.0, False, (1, ())),
                (make_scan(A, B), 1.0, False, None),
                (make_scan(A, B), 4.9, False, None),
                (make_scan(A, B), 5.0, False, (2, ())),
                (make_scan(A, B), 6.0, False, None),
            ],
            id="unchanged publishes once per interval",
        ),
        pytest.param(
            [
                (make_scan(A, B), 0.0, False, (1, ())),
                (make_scan(A, B_LOST), 0.5, False, (2, (UNHEALTHY,))),
                (make_scan(A, B_LOST), 1.0, False, None),
                (make_scan(A, B), 1.5, False, (3, (RECOVERED,))),
                (make_scan(A), 2.0, False, (4, (DISAPPEARED,))),
            ],
            id="a change publishes at once",
        ),
        pytest.param(
            [
                (make_scan(A, B), 0.0, False, (1, ())),
                (make_scan(A, B, problems=("nvidia-smi topo -m failed",)), 0.5, False, (2, ())),
            ],
            id="new problems publish at once",
        ),
        pytest.param(
            [
                (make_scan(A, B), 0.0, False, (1, ())),
                (make_scan(A, B), 0.1, True, (2, ())),
                (make_scan(A, B), 0.2, False, None),
                (make_scan(A), 0.3, True, (3, (DISAPPEARED,))),
            ],
            id="force always publishes, still diffing and sequencing",
        ),
        pytest.param(
            [
                (make_scan(A, host="box-a"), 0.0, False, (1, ())),
                (make_scan(C, host="box-b"), 0.1, False, (1, ())),
                (make_scan(A, host="box-a"), 0.2, False, None),
                (make_scan(A, B, host="box-a"), 0.3, False, (2, (APPEARED,))),
            ],
            id="hosts are tracked separately",
        ),
    ],
)
def test_publish_decider(steps: list[Step]) -> None:
    decider = PublishDecider(interval_s=5.0)
    for number, (scan, now_s, forced, expected) in enumerate(steps):
        at = FIXED_TIME + timedelta(seconds=now_s)
        inventory = decider.force(scan, now_s, at) if forced else decider.observe(scan, now_s, at)
        if expected is None:
            assert inventory is None, f"step {number} should not publish"
            continue
        assert inventory is not None, f"step {number} should publish"
        sequence, kinds = expected
        assert (inventory.sequence, tuple(c.kind for c in inventory.changes)) == (sequence, kinds)
        assert inventory.host == scan.host
        assert inventory.gpus == scan.gpus
        assert inventory.problems == scan.problems
        assert inventory.detected_at == at


def test_inventory_carries_the_scan_identity() -> None:
    scan = HostScan(
        host="box-a",
        source=InventorySource.SIMULATED,
        gpus=(A,),
        problems=("p",),
        fleet_file="deploy/fleets/reference.yaml",
    )
    inventory = PublishDecider(2.0).force(scan, 0.0, FIXED_TIME)
    assert (inventory.source, inventory.fleet_file, inventory.problems) == (
        InventorySource.SIMULATED,
        "deploy/fleets/reference.yaml",
        ("p",),
    )
