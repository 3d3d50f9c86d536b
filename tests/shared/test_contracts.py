from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from shared.contracts import Inventory, InventorySource, Message, RescanRequest, message_types, parse_any
from tests.builders import make_gpu


@pytest.mark.parametrize("type_name,model", sorted(message_types().items()))
def test_every_message_is_versioned_frozen_and_strict(type_name: str, model: type[Message]) -> None:
    assert re.fullmatch(r"gpuplane\.[a-z_.]+\.v\d+", type_name)
    assert model.model_config.get("frozen") is True
    assert model.model_config.get("extra") == "forbid"


def test_round_trip_through_parse_any() -> None:
    inv = Inventory(host="h", source=InventorySource.SIMULATED, gpus=(make_gpu(0), make_gpu(1)))
    again = parse_any(inv.model_dump_json())
    assert again == inv


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"type": "gpuplane.detector.rescan.v1", "unexpected": 1}, "unexpected"),
        ({"type": "gpuplane.inventory.v1", "host": "h"}, "source"),
        ({"type": "gpuplane.inventory.v1", "host": "h", "source": "guessed"}, "source"),
    ],
)
def test_bad_messages_name_the_field(payload: dict[str, object], field: str) -> None:
    import json

    with pytest.raises(ValidationError) as info:
        parse_any(json.dumps(payload))
    assert field in str(info.value)


def test_unknown_type_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_any('{"type": "gpuplane.inventory.v99"}')


def test_messages_are_immutable() -> None:
    msg = RescanRequest()
    with pytest.raises(ValidationError):
        msg.reason = "changed"  # type: ignore[misc]


def test_compute_capability_format_is_enforced() -> None:
    from shared.contracts import Gpu

    with pytest.raises(ValidationError, match="compute_capability"):
        Gpu.model_validate({**make_gpu(0).model_dump(), "compute_capability": "sm_86"})


def test_empty_inventory_says_no_gpus_and_why() -> None:
    inv = Inventory(host="h", source=InventorySource.NONE, problems=("NVML: library not found",))
    assert inv.status_message == "No GPUs detected (NVML: library not found)"
