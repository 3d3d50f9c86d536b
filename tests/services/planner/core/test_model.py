"""Units, shares and the plan's own verdicts."""

from __future__ import annotations

import pytest

from services.planner.core.framework import by_size, candidates
from services.planner.core.model import GpuKey, GpuLoad, Plan, Precision, ServiceSpec, fmt_gb, gb, mb
from tests.builders import make_problem, make_service, make_slot


@pytest.mark.parametrize(
    ("mib", "text"),
    [(4094, "4 GB"), (24564, "24 GB"), (22221, "21.7 GB"), (666, "0.65 GB"), (512, "0.5 GB"), (3584, "3.5 GB"),
     (1024, "1 GB"), (0, "0 GB")],
)
def test_fmt_gb(mib: int, text: str) -> None:
    assert fmt_gb(mib) == text


@pytest.mark.parametrize(("gigabytes", "mib"), [(21.7, 22221), (0.65, 666), (6.8, 6963), (2.0, 2048), (0.5, 512)])
def test_gb_round_trip(gigabytes: float, mib: int) -> None:
    assert mb(gigabytes) == mib
    assert round(gb(mib), 2) == gigabytes


@pytest.mark.parametrize(
    ("spec", "share", "minimum"),
    [
        pytest.param(make_service("x", 6.8, adjustable=True, min_gb=2), mb(6.8), mb(2), id="adjustable"),
        pytest.param(make_service("x", 6.8, min_gb=2), mb(6.8), mb(6.8), id="minimum-ignored-when-fixed"),
        pytest.param(make_service("x", 40, gpus=2), mb(20), mb(20), id="split-over-two"),
        pytest.param(make_service("x", 1, gpus=3), 342, 342, id="rounds-up"),
    ],
)
def test_share_per_gpu(spec: ServiceSpec, share: int, minimum: int) -> None:
    assert (spec.share_mb, spec.min_share_mb) == (share, minimum)


def test_plan_is_feasible_only_with_everything_placed_and_nothing_overcommitted() -> None:
    fits = GpuLoad("box-a", 0, "A", 4094, 4094, ("a",))
    over = GpuLoad("box-a", 0, "A", 4094, 4095, ("a",))

    assert Plan("vram_based", (), (), (fits,)).feasible
    assert not Plan("vram_based", (), (), (over,)).feasible
    assert not Plan("vram_based", (), (), (fits,), unplaced=("b",)).feasible


def test_gpu_labels_name_the_host_only_when_there_are_several() -> None:
    one = make_problem([make_slot(0), make_slot(1)])
    two = make_problem([make_slot(0), make_slot(0, host="box-b")])

    assert (one.multi_host, one.gpu_label("box-a", 1)) == (False, "GPU 1")
    assert (two.multi_host, two.gpu_label("box-b", 0)) == (True, "GPU box-b:0")
    assert two.hosts == ("box-a", "box-b")


def test_candidates_group_gpus_of_one_host_and_flag_nvlink_and_size() -> None:
    problem = make_problem([
        make_slot(0), make_slot(1, vram_gb=48), make_slot(2, nvlink=(3,)), make_slot(3, nvlink=(2,)),
        make_slot(0, host="box-b"), make_slot(1, host="box-b", healthy=False),
    ])

    found = {c.keys: (c.linked, c.equal) for c in candidates(problem, make_service("tp", 40, gpus=2))}

    a = [GpuKey("box-a", i) for i in range(4)]
    assert found == {
        (a[0], a[1]): (False, False), (a[0], a[2]): (False, True), (a[0], a[3]): (False, True),
        (a[1], a[2]): (False, False), (a[1], a[3]): (False, False), (a[2], a[3]): (True, True),
    }


def test_candidates_fall_back_to_gpus_without_the_precision_when_none_has_it() -> None:
    bf16 = make_service("x", 1, precision=Precision.BF16)
    mixed = make_problem([make_slot(0, bf16=False), make_slot(1)])
    turing = make_problem([make_slot(0, bf16=False)])

    assert [(c.keys, c.precision_ok) for c in candidates(mixed, bf16)] == [((GpuKey("box-a", 1),), True)]
    assert [(c.keys, c.precision_ok) for c in candidates(turing, bf16)] == [((GpuKey("box-a", 0),), False)]


def test_by_size_puts_the_largest_share_first_and_multi_gpu_before_single() -> None:
    services = [make_service("b", 2), make_service("tp", 4, gpus=2), make_service("a", 2), make_service("big", 3)]

    assert [s.name for s in by_size(services)] == ["big", "tp", "a", "b"]
