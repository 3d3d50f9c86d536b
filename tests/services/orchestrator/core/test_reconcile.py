"""Reconciliation: what differs between targets and containers, who gpuplane answers for, and verification."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import pytest

from services.orchestrator.core.model import ContainerView, ServiceTarget
from services.orchestrator.core.reconcile import (
    Change,
    Reconciliation,
    dependents,
    mismatches,
    reconcile,
    scope,
    verify_devices,
)
from tests.services.orchestrator.core.builders import applied, gpu_target, make_container, make_target

LLM = gpu_target("ai-llm", "0", budget="4")
LLM_35 = gpu_target("ai-llm", "0", budget="3.5")
LLM_NO_BUDGET = gpu_target("ai-llm", "0")
LLM_2 = gpu_target("ai-llm", "0", "1")
EMPTY = make_target("ai-llm")

# --------------------------------------------------------------------------- mismatches


@pytest.mark.parametrize(
    ("target", "container", "reasons"),
    [
        pytest.param(LLM, applied(LLM), [], id="in-sync"),
        pytest.param(LLM, applied(LLM, extra_env={"HF_HOME": "/m", "PATH": "/bin"}), [], id="unmanaged-env-ignored"),
        pytest.param(LLM_2, applied(LLM_2, device_ids=("1", "0")), [], id="device-order-irrelevant"),
        pytest.param(LLM, applied(LLM, device_ids=("1",)), ["GPU 1 -> 0"], id="device-change"),
        pytest.param(LLM, applied(LLM, device_ids=()), ["GPU none -> 0"], id="device-gained"),
        pytest.param(LLM_2, applied(LLM_2, device_ids=("0",)), ["GPU 0 -> 0, 1"], id="second-device-missing"),
        pytest.param(LLM, applied(LLM_35), ["VRAM_BUDGET_GB 3.5 -> 4"], id="budget-change"),
        pytest.param(LLM, applied(LLM_NO_BUDGET), ["VRAM_BUDGET_GB unset -> 4"], id="budget-added"),
        pytest.param(LLM_NO_BUDGET, applied(LLM), ["VRAM_BUDGET_GB 4 -> unset"], id="env-removed-when-labelled"),
        pytest.param(
            LLM_NO_BUDGET,
            make_container(
                device_ids=("0",),
                env={"GPUPLANE_ASSIGNED_GPUS": "0", "VRAM_BUDGET_GB": "8", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"},
            ),
            ["not applied by gpuplane yet"],
            id="base-file-env-ignored-without-label",
        ),
        pytest.param(
            LLM,
            make_container(device_ids=("0",), env={"GPUPLANE_ASSIGNED_GPUS": "0", "VRAM_BUDGET_GB": "8"}),
            ["VRAM_BUDGET_GB 8 -> 4"],
            id="base-file-env-compared-where-target-sets-it",
        ),
        pytest.param(LLM, applied(LLM, label="0123456789abcdef"), ["not applied by gpuplane yet"], id="label-differs"),
        pytest.param(
            LLM,
            make_container(device_ids=("0",), env={"GPUPLANE_ASSIGNED_GPUS": "0", "VRAM_BUDGET_GB": "4"}),
            ["not applied by gpuplane yet"],
            id="label-missing",
        ),
        pytest.param(
            LLM,
            applied(LLM_2),
            [
                "GPU 0, 1 -> 0",
                "VRAM_BUDGET_GB unset -> 4",
                "CUDA_DEVICE_ORDER PCI_BUS_ID -> unset",
                "VLLM_TENSOR_PARALLEL_SIZE 2 -> unset",
            ],
            id="several-reasons-devices-first-then-env-in-managed-order",
        ),
        pytest.param(
            EMPTY, make_container(label="0123456789abcdef"), ["GPU assignment removed"], id="assignment-removed"
        ),
        pytest.param(
            EMPTY,
            applied(LLM),
            ["GPU 0 -> none", "VRAM_BUDGET_GB 4 -> unset"],
            id="assignment-removed-from-a-gpu",
        ),
        pytest.param(EMPTY, make_container(), [], id="empty-target-never-ours"),
        pytest.param(
            EMPTY,
            make_container(env={"VRAM_BUDGET_GB": "8", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
            [],
            id="empty-target-base-file-env-never-ours",
        ),
    ],
)
def test_mismatches(target: ServiceTarget, container: ContainerView, reasons: list[str]) -> None:
    assert mismatches(target, container) == reasons


# --------------------------------------------------------------------------- scope

CLIP = gpu_target("ai-clip", "1")
YOLO = gpu_target("ai-yolo26", "1")


@pytest.mark.parametrize(
    ("targets", "previous", "containers", "expected"),
    [
        pytest.param({"ai-llm": LLM}, {}, [], {"ai-llm": LLM}, id="targets-only"),
        pytest.param(
            {"ai-llm": LLM},
            {"ai-clip": CLIP},
            [],
            {"ai-llm": LLM, "ai-clip": make_target("ai-clip")},
            id="previously-targeted-loses-gpu",
        ),
        pytest.param(
            {"ai-llm": LLM},
            {},
            [make_container("ai-yolo26", label="feedfacefeedface"), make_container("ai-florence")],
            {"ai-llm": LLM, "ai-yolo26": make_target("ai-yolo26")},
            id="labelled-container-loses-gpu-unlabelled-ignored",
        ),
        pytest.param(
            {"ai-llm": LLM, "ai-clip": CLIP},
            {"ai-llm": LLM_35, "ai-clip": make_target("ai-clip")},
            [applied(LLM_35), applied(CLIP)],
            {"ai-llm": LLM, "ai-clip": CLIP},
            id="current-target-wins",
        ),
        pytest.param(
            {"ai-llm": LLM},
            {"ai-zed": YOLO, "ai-alpha": CLIP},
            [
                make_container("ai-yolo26", label="x"),
                make_container("ai-clip", label="y"),
                make_container("ai-clip", id="ai-clip-2", label="y"),
            ],
            {
                "ai-llm": LLM,
                "ai-zed": make_target("ai-zed"),
                "ai-alpha": make_target("ai-alpha"),
                "ai-clip": make_target("ai-clip"),
                "ai-yolo26": make_target("ai-yolo26"),
            },
            id="targets-then-previous-then-labelled-sorted",
        ),
        pytest.param({}, {}, [], {}, id="nothing"),
    ],
)
def test_scope(
    targets: dict[str, ServiceTarget],
    previous: dict[str, ServiceTarget],
    containers: list[ContainerView],
    expected: dict[str, ServiceTarget],
) -> None:
    before = dict(targets)

    result = scope(targets, previous, containers)

    assert result == expected
    assert list(result) == list(expected)
    assert targets == before


# --------------------------------------------------------------------------- reconcile


def test_reconcile_changes_follow_the_targets_order() -> None:
    targets = {"ai-clip": CLIP, "ai-llm": LLM}
    containers = [applied(LLM_35, id="llm-1"), make_container("ai-clip", id="clip-1")]

    plan = reconcile(targets, containers, {"ai-llm", "ai-clip"})

    assert plan == Reconciliation(
        changes=(
            Change("ai-clip", "GPU none -> 1", (), ("1",), "clip-1"),
            Change("ai-llm", "VRAM_BUDGET_GB 3.5 -> 4", ("0",), ("0",), "llm-1"),
        ),
        notes=(),
    )


@pytest.mark.parametrize(
    ("targets", "containers", "project", "expected"),
    [
        pytest.param(
            {"ai-llm": LLM, "ai-clip": CLIP},
            [applied(LLM), applied(CLIP)],
            {"ai-llm", "ai-clip"},
            Reconciliation((), ()),
            id="in-sync",
        ),
        pytest.param(
            {"ai-gone": gpu_target("ai-gone", "0")},
            [],
            {"ai-llm"},
            Reconciliation((), ("ai-gone is in the configuration but not in the compose project: skipped",)),
            id="not-in-project-noted",
        ),
        pytest.param(
            {"ai-gone": make_target("ai-gone")},
            [],
            {"ai-llm"},
            Reconciliation((), ()),
            id="not-in-project-empty-silent",
        ),
        pytest.param(
            {"ai-llm": LLM},
            [],
            {"ai-llm"},
            Reconciliation(
                (), ("ai-llm has no container (not started?): it gets its GPU when started with the override",)
            ),
            id="no-container-noted",
        ),
        pytest.param({"ai-llm": EMPTY}, [], {"ai-llm"}, Reconciliation((), ()), id="no-container-empty-silent"),
        pytest.param(
            {"ai-llm": LLM},
            [applied(LLM, id="llm-1"), applied(LLM_35, id="llm-2")],
            {"ai-llm"},
            Reconciliation((Change("ai-llm", "VRAM_BUDGET_GB 3.5 -> 4", ("0",), ("0",), "llm-2"),), ()),
            id="second-of-two-containers-differs",
        ),
        pytest.param(
            {"ai-llm": LLM},
            [applied(LLM_35, id="llm-1"), applied(LLM, id="llm-2", device_ids=("1",))],
            {"ai-llm"},
            Reconciliation((Change("ai-llm", "VRAM_BUDGET_GB 3.5 -> 4", ("0",), ("0",), "llm-1"),), ()),
            id="both-containers-differ-one-change",
        ),
        pytest.param(
            {"ai-llm": EMPTY},
            [make_container(id="llm-1", label="feedfacefeedface")],
            {"ai-llm"},
            Reconciliation((Change("ai-llm", "GPU assignment removed", (), (), "llm-1"),), ()),
            id="assignment-removed",
        ),
        pytest.param(
            {"ai-llm": LLM},
            [applied(LLM), make_container("ai-other", device_ids=("0",))],
            {"ai-llm", "ai-other"},
            Reconciliation((), ()),
            id="untargeted-containers-ignored",
        ),
    ],
)
def test_reconcile(
    targets: dict[str, ServiceTarget],
    containers: list[ContainerView],
    project: set[str],
    expected: Reconciliation,
) -> None:
    assert reconcile(targets, containers, project) == expected


def test_reconcile_notes_and_changes_together() -> None:
    targets = {"ai-gone": gpu_target("ai-gone", "1"), "ai-llm": LLM, "ai-clip": CLIP}

    plan = reconcile(targets, [applied(LLM_35, id="llm-1")], ["ai-llm", "ai-clip"])

    assert [c.service for c in plan.changes] == ["ai-llm"]
    assert plan.notes == (
        "ai-gone is in the configuration but not in the compose project: skipped",
        "ai-clip has no container (not started?): it gets its GPU when started with the override",
    )


# --------------------------------------------------------------------------- dependents


@pytest.mark.parametrize(
    ("service", "depends_on", "expected"),
    [
        pytest.param("db", {}, set(), id="no-graph"),
        pytest.param("db", {"api": {"cache"}, "cache": set()}, set(), id="nobody-depends"),
        pytest.param("db", {"api": {"db"}, "worker": ["db", "cache"]}, {"api", "worker"}, id="direct"),
        pytest.param(
            "db",
            {"api": {"db"}, "web": {"api"}, "proxy": {"web"}, "other": {"x"}},
            {"api", "web", "proxy"},
            id="transitive-chain",
        ),
        pytest.param("db", {"a": {"db"}, "b": {"db"}, "c": {"a", "b"}}, {"a", "b", "c"}, id="diamond"),
        pytest.param("a", {"a": {"b"}, "b": {"a"}}, {"b"}, id="cycle-through-root-excludes-root"),
        pytest.param("db", {"a": {"db", "b"}, "b": {"a"}, "c": {"b"}}, {"a", "b", "c"}, id="cycle-beside-root"),
        pytest.param("a", {"a": {"a"}}, set(), id="self-dependency"),
        pytest.param("ghost", {"api": {"db"}}, set(), id="unknown-service"),
    ],
)
def test_dependents(service: str, depends_on: Mapping[str, Collection[str]], expected: set[str]) -> None:
    assert dependents(service, depends_on) == expected


# --------------------------------------------------------------------------- verify_devices

CDI = {
    "0": {"NVIDIA_VISIBLE_DEVICES": "0"},
    "1": {"NVIDIA_VISIBLE_DEVICES": "1", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"},
    "GPU-aaaa": {"NVIDIA_VISIBLE_DEVICES": "GPU-aaaa"},
}


@pytest.mark.parametrize(
    ("target", "container", "cdi_env", "expected"),
    [
        pytest.param(
            make_target("ai-llm", ("0",)),
            make_container(device_ids=("0",), env={"NVIDIA_VISIBLE_DEVICES": "0"}),
            CDI,
            None,
            id="ok-with-cdi-env",
        ),
        pytest.param(
            make_target("ai-llm", ("7",)),
            make_container(device_ids=("7",)),
            CDI,
            None,
            id="ok-device-without-cdi-entry",
        ),
        pytest.param(make_target("ai-llm", ("0",)), make_container(device_ids=("0",)), {}, None, id="ok-no-cdi-spec"),
        pytest.param(EMPTY, make_container(), CDI, None, id="ok-no-gpu"),
        pytest.param(
            make_target("ai-llm", ("0", "1")),
            make_container(
                device_ids=("1", "0"),
                env={"NVIDIA_VISIBLE_DEVICES": "1", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"},
            ),
            CDI,
            None,
            id="ok-multi-gpu-visible-devices-skipped",
        ),
        pytest.param(
            make_target("ai-llm", ("0",)),
            make_container(device_ids=()),
            CDI,
            "asked for 0, the container got no GPU (the compose command or the engine dropped the device)",
            id="device-dropped",
        ),
        pytest.param(
            make_target("ai-llm", ("0", "1")),
            make_container(device_ids=("0",)),
            CDI,
            "asked for 0, 1, the container got 0 (the compose command or the engine dropped the device)",
            id="one-of-two-dropped",
        ),
        pytest.param(
            EMPTY,
            make_container(device_ids=("0",)),
            CDI,
            "asked for no GPU, the container got 0 (the compose command or the engine dropped the device)",
            id="unexpected-device",
        ),
        pytest.param(
            make_target("ai-llm", ("0",)),
            make_container(device_ids=("0",)),
            CDI,
            "the CDI spec's edits for nvidia.com/gpu=0 are missing from the container "
            "(NVIDIA_VISIBLE_DEVICES=unset, expected 0)",
            id="cdi-env-missing",
        ),
        pytest.param(
            make_target("ai-llm", ("GPU-aaaa",)),
            make_container(device_ids=("GPU-aaaa",), env={"NVIDIA_VISIBLE_DEVICES": "void"}),
            CDI,
            "the CDI spec's edits for nvidia.com/gpu=GPU-aaaa are missing from the container "
            "(NVIDIA_VISIBLE_DEVICES=void, expected GPU-aaaa)",
            id="cdi-env-wrong-value",
        ),
        pytest.param(
            make_target("ai-llm", ("0", "1")),
            make_container(device_ids=("0", "1"), env={"NVIDIA_VISIBLE_DEVICES": "0"}),
            CDI,
            "the CDI spec's edits for nvidia.com/gpu=1 are missing from the container "
            "(NVIDIA_DRIVER_CAPABILITIES=unset, expected compute,utility)",
            id="multi-gpu-other-cdi-env-still-checked",
        ),
    ],
)
def test_verify_devices(
    target: ServiceTarget, container: ContainerView, cdi_env: Mapping[str, Mapping[str, str]], expected: str | None
) -> None:
    assert verify_devices(target, container, cdi_env) == expected


def test_mismatches_empty_target_leaves_base_file_gpu_alone() -> None:
    container = make_container("ai-florence", device_ids=("0",), env={"NVIDIA_VISIBLE_DEVICES": "0"})

    assert mismatches(make_target("ai-florence"), container) == []
