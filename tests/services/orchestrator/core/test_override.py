"""The compose override: targets from a saved configuration, the file's text, and reading it back."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import yaml

from services.orchestrator.core.model import TARGET_LABEL, ServiceTarget
from services.orchestrator.core.override import (
    DeviceIdMode,
    OverrideError,
    parse_override,
    render_override,
    target_of,
    targets_from_config,
)
from shared.contracts import ServiceAssignment
from tests.services.orchestrator.core.builders import (
    T0,
    gpu_target,
    gpu_uuid,
    make_assignment,
    make_config,
    make_target,
)

U0, U1, U2, U3 = (gpu_uuid(i) for i in range(4))

# --------------------------------------------------------------------------- target_of


@pytest.mark.parametrize(
    ("assignment", "mode", "device_ids", "env"),
    [
        pytest.param(
            make_assignment(gpu_indices=(0,)), "uuid", (U0,), {"GPUPLANE_ASSIGNED_GPUS": U0}, id="uuid-mode-one-gpu"
        ),
        pytest.param(
            make_assignment(gpu_indices=(1,)), "index", ("1",), {"GPUPLANE_ASSIGNED_GPUS": "1"}, id="index-mode-one-gpu"
        ),
        pytest.param(
            make_assignment(gpu_indices=(1,), gpu_uuids=()),
            "uuid",
            ("1",),
            {"GPUPLANE_ASSIGNED_GPUS": "1"},
            id="uuid-mode-no-uuids-falls-back-to-index",
        ),
        pytest.param(
            make_assignment(gpu_indices=(0, 1), gpu_uuids=(U0,)),
            "uuid",
            ("0", "1"),
            {"GPUPLANE_ASSIGNED_GPUS": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "VLLM_TENSOR_PARALLEL_SIZE": "2"},
            id="uuid-mode-fewer-uuids-than-indices-falls-back",
        ),
        pytest.param(
            make_assignment(gpu_indices=(0, 1), gpu_uuids=("", U1)),
            "uuid",
            ("0", "1"),
            {"GPUPLANE_ASSIGNED_GPUS": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "VLLM_TENSOR_PARALLEL_SIZE": "2"},
            id="uuid-mode-blank-uuid-falls-back",
        ),
        pytest.param(
            make_assignment(gpu_indices=(0, 1)),
            "uuid",
            (U0, U1),
            {
                "GPUPLANE_ASSIGNED_GPUS": f"{U0},{U1}",
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "VLLM_TENSOR_PARALLEL_SIZE": "2",
            },
            id="uuid-mode-two-gpus",
        ),
        pytest.param(
            make_assignment(gpu_indices=(0, 1)),
            "index",
            ("0", "1"),
            {"GPUPLANE_ASSIGNED_GPUS": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "VLLM_TENSOR_PARALLEL_SIZE": "2"},
            id="index-mode-ignores-uuids",
        ),
        pytest.param(
            make_assignment(gpu_indices=(3, 1, 2, 0)),
            "index",
            ("3", "1", "2", "0"),
            {
                "GPUPLANE_ASSIGNED_GPUS": "3,1,2,0",
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "VLLM_TENSOR_PARALLEL_SIZE": "4",
            },
            id="four-gpus-keep-assignment-order",
        ),
        pytest.param(
            make_assignment(gpu_indices=(1,), vram_budget_gb=3.5),
            "index",
            ("1",),
            {"GPUPLANE_ASSIGNED_GPUS": "1", "VRAM_BUDGET_GB": "3.5"},
            id="budget-3.5",
        ),
        pytest.param(
            make_assignment(gpu_indices=(1,), vram_budget_gb=4.0),
            "index",
            ("1",),
            {"GPUPLANE_ASSIGNED_GPUS": "1", "VRAM_BUDGET_GB": "4"},
            id="budget-4.0-without-decimals",
        ),
        pytest.param(
            make_assignment(gpu_indices=(1,), vram_budget_gb=2.25),
            "index",
            ("1",),
            {"GPUPLANE_ASSIGNED_GPUS": "1", "VRAM_BUDGET_GB": "2.25"},
            id="budget-2.25",
        ),
        pytest.param(
            make_assignment(gpu_indices=(0, 1), vram_budget_gb=20.0),
            "uuid",
            (U0, U1),
            {
                "GPUPLANE_ASSIGNED_GPUS": f"{U0},{U1}",
                "VRAM_BUDGET_GB": "20",
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "VLLM_TENSOR_PARALLEL_SIZE": "2",
            },
            id="multi-gpu-with-budget",
        ),
        pytest.param(make_assignment(gpu_indices=(0,), enabled=False), "uuid", (), {}, id="disabled-uuid"),
        pytest.param(
            make_assignment(gpu_indices=(0,), vram_budget_gb=3.5, enabled=False), "index", (), {}, id="disabled-index"
        ),
        pytest.param(make_assignment(gpu_indices=()), "uuid", (), {}, id="unplaced"),
        pytest.param(make_assignment(gpu_indices=(), vram_budget_gb=2.0), "index", (), {}, id="unplaced-with-budget"),
    ],
)
def test_target_of(
    assignment: ServiceAssignment, mode: DeviceIdMode, device_ids: tuple[str, ...], env: dict[str, str]
) -> None:
    target = target_of(assignment, mode)

    assert target == ServiceTarget.of(assignment.service, device_ids, env)
    assert target.service == assignment.service
    assert target.env_map == env
    assert target.empty is (not device_ids)


@pytest.mark.parametrize("mode", ["uuid", "index"])
def test_targets_from_config_covers_every_service_in_order(mode: DeviceIdMode) -> None:
    config = make_config(
        make_assignment("ai-yolo26", (1,)),
        make_assignment("ai-llm", (0,), vram_budget_gb=20.0),
        make_assignment("ai-clip", (1,), enabled=False),
        make_assignment("ai-florence", ()),
    )

    targets = targets_from_config(config, mode)

    assert list(targets) == ["ai-yolo26", "ai-llm", "ai-clip", "ai-florence"]
    assert targets["ai-yolo26"].device_ids == ((U1,) if mode == "uuid" else ("1",))
    assert targets["ai-llm"].env_map["VRAM_BUDGET_GB"] == "20"
    assert targets["ai-clip"] == ServiceTarget.of("ai-clip")
    assert targets["ai-florence"] == ServiceTarget.of("ai-florence")


def test_targets_from_config_of_empty_config() -> None:
    assert targets_from_config(make_config(), "uuid") == {}


# --------------------------------------------------------------------------- render_override


@pytest.mark.parametrize(
    ("revision", "when", "first_line"),
    [
        pytest.param(
            None,
            None,
            "# Generated by gpuplane's orchestrator. DO NOT EDIT: it is rewritten on every apply.",
            id="no-source",
        ),
        pytest.param(
            7,
            None,
            "# Generated by gpuplane's orchestrator from configuration revision 7. "
            "DO NOT EDIT: it is rewritten on every apply.",
            id="revision",
        ),
        pytest.param(
            None,
            T0,
            "# Generated by gpuplane's orchestrator from 2026-01-02 03:04:05 UTC. "
            "DO NOT EDIT: it is rewritten on every apply.",
            id="time",
        ),
        pytest.param(
            12,
            T0,
            "# Generated by gpuplane's orchestrator from configuration revision 12, 2026-01-02 03:04:05 UTC. "
            "DO NOT EDIT: it is rewritten on every apply.",
            id="revision-and-time",
        ),
        pytest.param(
            0,
            None,
            "# Generated by gpuplane's orchestrator from configuration revision 0. "
            "DO NOT EDIT: it is rewritten on every apply.",
            id="revision-zero-still-named",
        ),
    ],
)
@pytest.mark.parametrize(
    "targets",
    [
        pytest.param({}, id="nothing"),
        pytest.param({"ai-llm": gpu_target("ai-llm", "0")}, id="one-service"),
    ],
)
def test_render_header(
    targets: dict[str, ServiceTarget], revision: int | None, when: datetime | None, first_line: str
) -> None:
    text = render_override(targets, revision=revision, at=when)

    lines = text.splitlines()
    assert lines[0] == first_line
    assert (
        lines[1] == "# Change GPU assignments with PUT /api/system/gpu-config, then POST /api/system/gpu-config/apply."
    )
    assert not lines[2].startswith("#")


def _devices(*ids: str) -> dict[str, Any]:
    return {
        "resources": {
            "reservations": {"devices": [{"driver": "nvidia", "device_ids": list(ids), "capabilities": ["gpu"]}]}
        }
    }


LLM_2 = gpu_target("ai-llm", U0, U1, budget="20")
CLIP = gpu_target("ai-clip", "1", budget="3.5")
DEVICES_ONLY = make_target("ai-yolo26", ("1",))
ENV_ONLY = make_target("ai-florence", (), {"VRAM_BUDGET_GB": "4"})


@pytest.mark.parametrize(
    ("targets", "services"),
    [
        pytest.param(
            {"ai-clip": CLIP},
            {
                "ai-clip": {
                    "deploy": _devices("1"),
                    "environment": {"GPUPLANE_ASSIGNED_GPUS": "1", "VRAM_BUDGET_GB": "3.5"},
                    "labels": {TARGET_LABEL: CLIP.digest},
                }
            },
            id="one-gpu-with-budget",
        ),
        pytest.param(
            {"ai-llm": LLM_2},
            {
                "ai-llm": {
                    "deploy": _devices(U0, U1),
                    "environment": {
                        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                        "GPUPLANE_ASSIGNED_GPUS": f"{U0},{U1}",
                        "VLLM_TENSOR_PARALLEL_SIZE": "2",
                        "VRAM_BUDGET_GB": "20",
                    },
                    "labels": {TARGET_LABEL: LLM_2.digest},
                }
            },
            id="two-gpus-by-uuid",
        ),
        pytest.param(
            {"ai-yolo26": DEVICES_ONLY},
            {"ai-yolo26": {"deploy": _devices("1"), "labels": {TARGET_LABEL: DEVICES_ONLY.digest}}},
            id="devices-without-env",
        ),
        pytest.param(
            {"ai-florence": ENV_ONLY},
            {"ai-florence": {"environment": {"VRAM_BUDGET_GB": "4"}, "labels": {TARGET_LABEL: ENV_ONLY.digest}}},
            id="env-without-devices",
        ),
        pytest.param(
            {"ai-off": make_target("ai-off"), "ai-clip": CLIP, "ai-unplaced": make_target("ai-unplaced")},
            {
                "ai-clip": {
                    "deploy": _devices("1"),
                    "environment": {"GPUPLANE_ASSIGNED_GPUS": "1", "VRAM_BUDGET_GB": "3.5"},
                    "labels": {TARGET_LABEL: CLIP.digest},
                }
            },
            id="empty-targets-left-out",
        ),
    ],
)
def test_render_structure(targets: dict[str, ServiceTarget], services: dict[str, Any]) -> None:
    text = render_override(targets, revision=4, at=T0)

    assert yaml.safe_load(text) == {"services": services}


def test_render_keeps_the_targets_order() -> None:
    targets = {"z-last": gpu_target("z-last", "0"), "a-first": gpu_target("a-first", "1")}

    doc = yaml.safe_load(render_override(targets))

    assert list(doc["services"]) == ["z-last", "a-first"]


@pytest.mark.parametrize(
    "targets",
    [
        pytest.param({}, id="no-targets"),
        pytest.param({"ai-off": make_target("ai-off"), "ai-unplaced": make_target("ai-unplaced")}, id="all-empty"),
    ],
)
def test_render_nothing_to_write(targets: dict[str, ServiceTarget]) -> None:
    text = render_override(targets, revision=2)

    assert text.endswith("\nservices: {}\n")
    assert "DO NOT EDIT" in text
    assert yaml.safe_load(text) == {"services": {}}


def test_render_quotes_numeric_looking_values() -> None:
    """Device indices and numbers in the environment must stay strings once compose reads the file."""
    text = render_override({"ai-llm": gpu_target("ai-llm", "0", "1", budget="4")}, revision=1)
    service = yaml.safe_load(text)["services"]["ai-llm"]

    assert service["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0", "1"]
    assert all(isinstance(v, str) for v in service["environment"].values())


# --------------------------------------------------------------------------- round trip

CONFIG = make_config(
    make_assignment("ai-llm", (0, 1), vram_budget_gb=20.0),
    make_assignment("ai-clip", (1,), vram_budget_gb=3.5),
    make_assignment("ai-yolo26", (0,)),
    make_assignment("ai-florence", (1,), enabled=False),
    make_assignment("ai-enrichment", ()),
    make_assignment("ai-partial", (2, 3), gpu_uuids=(U2,)),
)


@pytest.mark.parametrize(
    "targets",
    [
        pytest.param(targets_from_config(CONFIG, "uuid"), id="config-uuid"),
        pytest.param(targets_from_config(CONFIG, "index"), id="config-index"),
        pytest.param({"ai-llm": gpu_target("ai-llm", "0")}, id="single"),
        pytest.param({"ai-florence": ENV_ONLY, "ai-yolo26": DEVICES_ONLY}, id="env-only-and-devices-only"),
        pytest.param({"ai-off": make_target("ai-off")}, id="only-empty"),
        pytest.param({}, id="nothing"),
    ],
)
def test_round_trip(targets: dict[str, ServiceTarget]) -> None:
    parsed = parse_override(render_override(targets, revision=9, at=T0))

    assert parsed == {name: t for name, t in targets.items() if not t.empty}
    assert list(parsed) == [name for name, t in targets.items() if not t.empty]
    assert all(parsed[name].digest == targets[name].digest for name in parsed)


# --------------------------------------------------------------------------- parse_override


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("  \n\t\n", id="whitespace"),
        pytest.param("# just a comment\n", id="only-comment"),
        pytest.param("---\n", id="empty-document"),
        pytest.param("version: '3.8'\n", id="no-services-key"),
        pytest.param("services: {}\n", id="empty-services"),
    ],
)
def test_parse_nothing(text: str | None) -> None:
    assert parse_override(text) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """
services:
  ai-clip:
    environment:
      - VRAM_BUDGET_GB=3.5
      - GPUPLANE_ASSIGNED_GPUS=1
      - HF_HOME=/models
""",
            make_target("ai-clip", (), {"VRAM_BUDGET_GB": "3.5", "GPUPLANE_ASSIGNED_GPUS": "1"}),
            id="list-form-env",
        ),
        pytest.param(
            """
services:
  ai-clip:
    environment:
      - GPUPLANE_ASSIGNED_GPUS=a=b
      - VRAM_BUDGET_GB
""",
            make_target("ai-clip", (), {"GPUPLANE_ASSIGNED_GPUS": "a=b", "VRAM_BUDGET_GB": ""}),
            id="list-form-env-split-on-first-equals-and-bare-name",
        ),
        pytest.param(
            """
services:
  ai-clip:
    environment:
      VRAM_BUDGET_GB: 4
      CUDA_DEVICE_ORDER:
      PATH: /usr/bin
      HF_HOME: /models
""",
            make_target("ai-clip", (), {"VRAM_BUDGET_GB": "4", "CUDA_DEVICE_ORDER": ""}),
            id="mapping-env-values-as-strings-unmanaged-dropped",
        ),
        pytest.param(
            """
services:
  ai-llm:
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              device_ids: [0, 1]
              capabilities: [gpu]
            - driver: nvidia
              device_ids: ["GPU-x"]
              capabilities: [gpu]
""",
            make_target("ai-llm", ("0", "1", "GPU-x")),
            id="device-ids-from-every-device-entry",
        ),
        pytest.param(
            """
services:
  ai-llm:
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              count: all
              capabilities: [gpu]
""",
            make_target("ai-llm"),
            id="device-without-ids",
        ),
        pytest.param(
            """
services:
  ai-llm:
    labels:
      io.gpuplane.target: abcdef
    image: whatever
""",
            make_target("ai-llm"),
            id="service-without-devices-or-env-is-an-empty-target",
        ),
        pytest.param(
            """
services:
  ai-llm:
    deploy:
      replicas: 1
    environment:
      HF_HOME: /models
""",
            make_target("ai-llm"),
            id="only-unmanaged-env-and-no-reservations",
        ),
    ],
)
def test_parse(text: str, expected: ServiceTarget) -> None:
    assert parse_override(text) == {expected.service: expected}


def test_parse_names_services_as_strings() -> None:
    parsed = parse_override("services:\n  123:\n    environment: {VRAM_BUDGET_GB: '2'}\n")

    assert parsed == {"123": make_target("123", (), {"VRAM_BUDGET_GB": "2"})}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("services: {ai-llm: [\n", "the override file is not valid YAML", id="bad-yaml"),
        pytest.param("- ai-llm\n- ai-clip\n", "must be a mapping with a 'services' mapping", id="top-level-list"),
        pytest.param("just some text\n", "must be a mapping with a 'services' mapping", id="top-level-scalar"),
        pytest.param("services: [ai-llm]\n", "must be a mapping with a 'services' mapping", id="services-list"),
        pytest.param("services: gpu\n", "must be a mapping with a 'services' mapping", id="services-scalar"),
        pytest.param("services:\n  ai-llm: gpu0\n", "services.ai-llm must be a mapping", id="service-scalar"),
        pytest.param("services:\n  ai-llm:\n", "services.ai-llm must be a mapping", id="service-null"),
        pytest.param("services:\n  ai-llm: [1]\n", "services.ai-llm must be a mapping", id="service-list"),
        pytest.param(
            "services:\n  ai-llm:\n    environment: 5\n",
            "services.ai-llm.environment must be a mapping or a list",
            id="environment-scalar",
        ),
        pytest.param(
            "services:\n  ai-llm:\n    deploy: {resources: {reservations: {devices: {driver: nvidia}}}}\n",
            "services.ai-llm.deploy.resources.reservations.devices must be a list",
            id="devices-mapping",
        ),
        pytest.param(
            "services:\n  ai-llm:\n    deploy: {resources: {reservations: {devices: [nvidia]}}}\n",
            "services.ai-llm.deploy.resources.reservations.devices must list mappings",
            id="devices-list-of-strings",
        ),
    ],
)
def test_parse_malformed(text: str, message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        parse_override(text)


def test_override_error_is_a_value_error() -> None:
    assert issubclass(OverrideError, ValueError)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("services:\n  ai-llm:\n    deploy: gpu\n", id="deploy-scalar"),
        pytest.param("services:\n  ai-llm:\n    deploy:\n      resources: [1]\n", id="resources-list"),
        pytest.param("services:\n  ai-llm:\n    deploy: {resources: {reservations: nvidia}}\n", id="reservations-str"),
    ],
)
def test_parse_malformed_deploy_levels_raise_override_error(text: str) -> None:
    with pytest.raises(OverrideError, match="services.ai-llm.deploy"):
        parse_override(text)


@pytest.mark.parametrize(
    "device_ids",
    [pytest.param("GPU-x", id="string"), pytest.param("1", id="int"), pytest.param("0", id="zero")],
)
def test_parse_scalar_device_ids_raise_override_error(device_ids: str) -> None:
    devices = f"[{{driver: nvidia, device_ids: {device_ids}}}]"
    text = f"services:\n  ai-llm:\n    deploy: {{resources: {{reservations: {{devices: {devices}}}}}}}\n"

    with pytest.raises(OverrideError, match="device_ids"):
        parse_override(text)
