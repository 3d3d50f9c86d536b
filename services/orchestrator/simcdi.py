"""A CDI spec for a simulated fleet: each GPU becomes a ``nvidia.com/gpu`` device that only sets
environment variables, so podman can start a container "on GPU N" on a machine without one, through
the same compose path a real GPU takes."""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from shared.contracts import Inventory

HEADER = (
    "# A CDI spec for a SIMULATED fleet, written by `gpuplane cdi-spec`: no device node is injected.\n"
    "# Each GPU is named by index and by UUID (as nvidia-ctk names them); a container sees which one it\n"
    "# got in NVIDIA_VISIBLE_DEVICES. On a machine with GPUs use `nvidia-ctk cdi generate` instead.\n"
)


def render_simulated_spec(inventories: Sequence[Inventory]) -> str:
    devices: list[dict[str, object]] = []
    for inventory in inventories:
        for gpu in inventory.gpus:
            env = [f"NVIDIA_VISIBLE_DEVICES={gpu.index}", f"GPUPLANE_SIMULATED_GPU={gpu.name}"]
            for name in (str(gpu.index), gpu.uuid):
                if name:
                    devices.append({"name": name, "containerEdits": {"env": list(env)}})
    spec = {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": devices}
    return HEADER + yaml.safe_dump(spec, sort_keys=False)
