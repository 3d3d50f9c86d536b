"""From inventories and requests to the planner's snapshot; bad requests name the field at fault."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.planner.core.model import GpuSlot, Pin, mb
from services.planner.core.snapshot import make_problem, pins_from_requests, pins_from_saved, slots_from
from shared.contracts import AssignmentRequest, ServiceAssignment
from shared.errors import InvalidRequest
from tests.builders import make_gpu, make_inventory, make_reference_gpus, make_rtx3090, make_service, reference_catalog

TP = make_service("ai-vllm", 40, gpus=2)
CATALOG = (*reference_catalog(), TP)
ONE_HOST = slots_from([make_inventory(make_reference_gpus())])
TWO_HOSTS = slots_from([make_inventory(host="box-a"), make_inventory(host="box-b")])


def req(service: str, **fields: object) -> AssignmentRequest:
    return AssignmentRequest.model_validate({"service": service, **fields})


def test_slots_come_host_by_host_in_index_order_with_what_the_detector_saw() -> None:
    box_b = make_inventory((make_rtx3090(1, nvlink_peers=(0,)), make_rtx3090(0, nvlink_peers=(1,))), host="box-b")
    box_a = make_inventory((make_gpu(0, name="Tesla T4", compute_capability="7.5", healthy=False,
                                     health_reason="XID 79"),), host="box-a")

    slots = slots_from([box_b, box_a])

    assert [(s.host, s.index) for s in slots] == [("box-a", 0), ("box-b", 0), ("box-b", 1)]
    t4, first_3090 = slots[0], slots[1]
    assert (t4.supports_fp16, t4.supports_bf16, t4.compute_capability) == (True, False, "7.5")
    assert (t4.healthy, t4.health_reason) == (False, "XID 79")
    assert first_3090.speed == pytest.approx(82 * 128 * 2 * 1695 / 1e6)
    assert replace(first_3090, speed=0.0) == GpuSlot(
        host="box-b",
        index=0,
        uuid="GPU-00000000-0000-4000-8000-000000000000",
        name="NVIDIA GeForce RTX 3090",
        capacity_mb=24576,
        speed=0.0,
        speed_basis="SM count x clock",
        nvlink_peers=frozenset({1}),
        supports_fp16=True,
        supports_bf16=True,
        compute_capability="8.6",
    )


def test_make_problem_carries_catalog_pins_and_headroom() -> None:
    pins = (Pin("ai-clip", (1,), "box-a"),)

    problem = make_problem([make_inventory(make_reference_gpus())], CATALOG, pins, headroom_gb=0.75)

    assert problem.gpus == ONE_HOST
    assert problem.services == CATALOG
    assert problem.pins == pins
    assert problem.headroom_mb == 768
    assert make_problem([], CATALOG).headroom_mb == 512


@pytest.mark.parametrize(
    ("requests", "gpus", "pins"),
    [
        pytest.param([req("ai-llm")], ONE_HOST, (Pin("ai-llm"),), id="auto"),
        pytest.param([req("ai-llm", gpu_index=0)], ONE_HOST, (Pin("ai-llm", (0,), "box-a"),), id="one-host-is-implied"),
        pytest.param([req("ai-llm", gpu_index=7)], ONE_HOST, (Pin("ai-llm", (7,), "box-a"),),
                     id="unknown-index-is-allowed"),
        pytest.param([req("ai-llm", gpu_indices=[1])], ONE_HOST, (Pin("ai-llm", (1,), "box-a"),),
                     id="indices-of-one"),
        pytest.param([req("ai-vllm", gpu_indices=[0, 1])], ONE_HOST, (Pin("ai-vllm", (0, 1), "box-a"),),
                     id="tensor-parallel"),
        pytest.param([req("ai-llm", gpu_index=1, host="box-b")], TWO_HOSTS, (Pin("ai-llm", (1,), "box-b"),),
                     id="host-given"),
        pytest.param([req("ai-llm")], TWO_HOSTS, (Pin("ai-llm"),), id="auto-needs-no-host"),
        pytest.param([req("ai-llm", gpu_index=0)], (), (Pin("ai-llm", (0,), None),), id="no-gpus-no-host"),
        pytest.param(
            [req("ai-enrichment", vram_budget_override=3.5, enabled=False), req("ai-clip", enabled=False)],
            ONE_HOST,
            (Pin("ai-enrichment", None, None, mb(3.5), enabled=False), Pin("ai-clip", enabled=False)),
            id="budget-in-gb-and-disabled",
        ),
    ],
)
def test_pins_from_valid_requests(
    requests: list[AssignmentRequest], gpus: tuple[GpuSlot, ...], pins: tuple[Pin, ...]
) -> None:
    assert pins_from_requests(requests, CATALOG, gpus) == pins


@pytest.mark.parametrize(
    ("requests", "gpus", "field", "message"),
    [
        pytest.param(
            [req("ai-llm"), req("ai-clip"), req("ai-chat")],
            ONE_HOST,
            "assignments.2.service",
            "unknown service 'ai-chat'; the catalog has: ai-llm, ai-yolo26, ai-florence, ai-clip, ai-enrichment, "
            "ai-vllm",
            id="unknown-service",
        ),
        pytest.param(
            [req("ai-llm", gpu_index=0), req("ai-clip"), req("ai-llm", gpu_index=1)],
            ONE_HOST,
            "assignments.2.service",
            "ai-llm is listed twice (also at assignments.0)",
            id="duplicate",
        ),
        pytest.param(
            [req("ai-llm", gpu_index=0, gpu_indices=[0])],
            ONE_HOST,
            "assignments.0.gpu_indices",
            "give gpu_index or gpu_indices, not both",
            id="index-and-indices",
        ),
        pytest.param(
            [req("ai-clip"), req("ai-vllm", gpu_indices=[0])],
            ONE_HOST,
            "assignments.1.gpu_indices",
            "ai-vllm needs 2 GPU(s); 1 given",
            id="too-few-gpus",
        ),
        pytest.param(
            [req("ai-llm", gpu_indices=[0, 1])],
            ONE_HOST,
            "assignments.0.gpu_indices",
            "ai-llm needs 1 GPU(s); 2 given",
            id="too-many-gpus",
        ),
        pytest.param(
            [req("ai-vllm", gpu_index=0)],
            ONE_HOST,
            "assignments.0.gpu_index",
            "ai-vllm needs 2 GPUs on one host: give gpu_indices",
            id="index-for-a-multi-gpu-service",
        ),
        pytest.param(
            [req("ai-vllm", gpu_indices=[1, 1])],
            ONE_HOST,
            "assignments.0.gpu_indices",
            "GPU indices must be distinct and not negative",
            id="repeated-index",
        ),
        pytest.param(
            # The contract refuses a negative index first; the planner checks again for callers that build one.
            [AssignmentRequest.model_construct(service="ai-vllm", gpu_index=None, gpu_indices=(0, -1), host=None,
                                               vram_budget_override=None, enabled=True)],
            ONE_HOST,
            "assignments.0.gpu_indices",
            "GPU indices must be distinct and not negative",
            id="negative-index",
        ),
        pytest.param(
            [req("ai-enrichment", vram_budget_override=3.0), req("ai-llm", vram_budget_override=20.0)],
            ONE_HOST,
            "assignments.1.vram_budget_override",
            "ai-llm has no adjustable VRAM budget (its catalog entry does not set budget_adjustable)",
            id="budget-on-a-fixed-service",
        ),
        pytest.param(
            [req("ai-llm", gpu_index=0)],
            TWO_HOSTS,
            "assignments.0.host",
            "several hosts have GPUs (box-a, box-b): say which one ai-llm goes on",
            id="host-missing",
        ),
    ],
)
def test_bad_requests_name_the_field(
    requests: list[AssignmentRequest], gpus: tuple[GpuSlot, ...], field: str, message: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        pins_from_requests(requests, CATALOG, gpus)

    assert caught.value.field == field
    assert str(caught.value) == message
    assert caught.value.reply_code == "bad_request"


def test_saved_assignments_become_pins_that_keep_everything_where_it_is() -> None:
    saved = (
        ServiceAssignment(service="ai-llm", model="m", host="box-a", gpu_indices=(0,), vram_estimate_gb=21.7,
                          placed_by="vram_based"),
        ServiceAssignment(service="ai-enrichment", model="m", host="box-a", gpu_indices=(1,), vram_estimate_gb=6.8,
                          vram_budget_gb=2.3, vram_budget_override=3.0, placed_by="manual", pinned=True),
        ServiceAssignment(service="ai-clip", model="m", host=None, gpu_indices=(), vram_estimate_gb=1.2,
                          placed_by="disabled", enabled=False),
    )

    assert pins_from_saved(saved) == (
        Pin("ai-llm", (0,), "box-a"),
        Pin("ai-enrichment", (1,), "box-a", mb(3.0)),
        Pin("ai-clip", None, None, None, enabled=False),
    )
