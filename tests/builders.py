"""Builders for contract objects in tests: sensible defaults, override only what a test is about."""

from __future__ import annotations

from datetime import UTC, datetime

from services.detector.core import precision_support
from shared.contracts import Gpu, Inventory, InventoryChange, InventorySource

FIXED_TIME = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
"""A fixed instant, so builders never read the clock."""


def make_gpu(
    index: int = 0,
    *,
    name: str = "NVIDIA RTX A5500",
    uuid: str | None = None,
    pci_bus_id: str | None = None,
    vram_total_mb: int = 24564,
    vram_used_mb: int = 0,
    vram_free_mb: int | None = None,
    utilization_percent: float | None = 0.0,
    compute_capability: str | None = "8.6",
    supports_fp16: bool | None = None,
    supports_bf16: bool | None = None,
    temperature_c: float | None = 35.0,
    power_draw_w: float | None = 20.0,
    power_limit_w: float | None = 230.0,
    sm_count: int | None = 80,
    max_sm_clock_mhz: int | None = 1665,
    nvlink_peers: tuple[int, ...] = (),
    healthy: bool = True,
    health_reason: str | None = None,
) -> Gpu:
    """A GPU like the reference RTX A5500; uuid and bus id follow from ``index`` unless given.

    ``vram_free_mb`` defaults to total - used; fp16/bf16 default to what the compute
    capability implies (fp16 from 5.3, bf16 from 8.0).
    """
    fp16, bf16 = precision_support(compute_capability)
    return Gpu(
        index=index,
        uuid=uuid if uuid is not None else f"GPU-00000000-0000-4000-8000-{index:012x}",
        name=name,
        pci_bus_id=pci_bus_id if pci_bus_id is not None else f"00000000:{index + 1:02X}:00.0",
        vram_total_mb=vram_total_mb,
        vram_used_mb=vram_used_mb,
        vram_free_mb=vram_free_mb if vram_free_mb is not None else vram_total_mb - vram_used_mb,
        utilization_percent=utilization_percent,
        compute_capability=compute_capability,
        supports_fp16=supports_fp16 if supports_fp16 is not None else fp16,
        supports_bf16=supports_bf16 if supports_bf16 is not None else bf16,
        temperature_c=temperature_c,
        power_draw_w=power_draw_w,
        power_limit_w=power_limit_w,
        sm_count=sm_count,
        max_sm_clock_mhz=max_sm_clock_mhz,
        nvlink_peers=nvlink_peers,
        healthy=healthy,
        health_reason=health_reason,
    )


def make_inventory(
    gpus: tuple[Gpu, ...] | None = None,
    *,
    host: str = "box-a",
    source: InventorySource = InventorySource.SIMULATED,
    detected_at: datetime = FIXED_TIME,
    sequence: int = 1,
    changes: tuple[InventoryChange, ...] = (),
    problems: tuple[str, ...] = (),
    fleet_file: str | None = None,
) -> Inventory:
    """An inventory of ``gpus`` (default: two reference GPUs, indices 0 and 1) at a fixed time."""
    return Inventory(
        host=host,
        source=source,
        gpus=gpus if gpus is not None else (make_gpu(0), make_gpu(1)),
        detected_at=detected_at,
        sequence=sequence,
        changes=changes,
        problems=problems,
        fleet_file=fleet_file,
    )
