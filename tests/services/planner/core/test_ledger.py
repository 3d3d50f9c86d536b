"""The ledger: what fits on a GPU, how adjustable budgets give way, and the balance cost."""

from __future__ import annotations

import pytest

from services.planner.core.ledger import OVERFLOW_PENALTY, Ledger, Tenant, tenant_for
from services.planner.core.model import GpuKey, ServiceSpec, mb
from tests.builders import make_service, make_slot, reference_catalog

KEY = GpuKey("box-a", 0)
CATALOG = {s.name: s for s in reference_catalog()}
LLM, CLIP, ENRICH = CATALOG["ai-llm"], CATALOG["ai-clip"], CATALOG["ai-enrichment"]
A400_MB = 4094
A5500_MB = 24564


def ledger_with(capacity_mb: int, *tenants: ServiceSpec, headroom_mb: int = 512) -> Ledger:
    ledger = Ledger([make_slot(0, capacity_mb=capacity_mb)], headroom_mb)
    for spec in tenants:
        ledger.add((KEY,), tenant_for(spec))
    return ledger


@pytest.mark.parametrize(
    ("capacity_mb", "present", "newcomer", "fits"),
    [
        pytest.param(A400_MB, (), make_service("x", 3.9), True, id="fixed-below-capacity"),
        pytest.param(4096, (), make_service("x", 4), True, id="fixed-exactly-capacity"),
        pytest.param(A400_MB, (), make_service("x", 4), False, id="fixed-2-mib-over"),
        pytest.param(A400_MB, (), ENRICH, True, id="adjustable-shrinks-to-fit"),
        pytest.param(mb(2.4), (), ENRICH, False, id="adjustable-minimum-plus-headroom-too-big"),
        pytest.param(A400_MB, (ENRICH,), CLIP, True, id="fixed-beside-shrinkable"),
        pytest.param(A400_MB, (ENRICH,), make_service("x", 1.6), False, id="minimum-would-be-crossed"),
        pytest.param(A5500_MB, (LLM,), ENRICH, False, id="enrichment-beside-llm"),
        pytest.param(mb(8), (make_service("a", 6, adjustable=True, min_gb=2),),
                     make_service("b", 6, adjustable=True, min_gb=2), True, id="two-adjustables-at-minimum"),
    ],
)
def test_fits(capacity_mb: int, present: tuple[ServiceSpec, ...], newcomer: ServiceSpec, fits: bool) -> None:
    ledger = ledger_with(capacity_mb, *present)

    assert ledger.fits(KEY, tenant_for(newcomer)) is fits


@pytest.mark.parametrize(
    ("capacity_mb", "tenants", "headroom_mb", "budgets_gb", "planned_mb"),
    [
        pytest.param(A400_MB, (ENRICH,), 512, {"ai-enrichment": 3.5}, mb(3.5), id="alone-on-4gb-gets-3.5"),
        pytest.param(A400_MB, (ENRICH,), 1024, {"ai-enrichment": 3.0}, mb(3.0), id="larger-headroom"),
        pytest.param(A5500_MB, (ENRICH,), 512, {}, ENRICH.vram_mb, id="room-enough-no-budget"),
        pytest.param(A400_MB, (ENRICH, CLIP), 512, {"ai-enrichment": 2.3}, CLIP.vram_mb + mb(2.3), id="beside-clip"),
        pytest.param(A5500_MB, (LLM, ENRICH), 512, {"ai-enrichment": 2.0}, LLM.vram_mb + mb(2.0),
                     id="never-below-minimum"),
        pytest.param(
            mb(8),
            (make_service("a", 6, adjustable=True, min_gb=1), make_service("b", 3, adjustable=True, min_gb=1)),
            512,
            {"a": 5.0, "b": 2.5},
            mb(7.5),
            id="two-adjustables-split-in-proportion",
        ),
        pytest.param(
            mb(8),
            (make_service("a", 6, adjustable=True, min_gb=1), make_service("b", 3, adjustable=True, min_gb=3)),
            512,
            {"a": 4.5, "b": 3.0},
            mb(7.5),
            id="a-minimum-holds-the-rest-resplit",
        ),
        pytest.param(mb(8), (make_service("x", 9),), 512, {}, mb(9), id="fixed-overcommit-is-counted"),
    ],
)
def test_budgets_and_planned(
    capacity_mb: int, tenants: tuple[ServiceSpec, ...], headroom_mb: int, budgets_gb: dict[str, float], planned_mb: int
) -> None:
    ledger = ledger_with(capacity_mb, *tenants, headroom_mb=headroom_mb)

    assert ledger.budgets(KEY) == {name: mb(v) for name, v in budgets_gb.items()}
    assert ledger.planned(KEY) == planned_mb


@pytest.mark.parametrize(
    ("capacity_mb", "tenants", "cost"),
    [
        pytest.param(mb(8), (), 0.0, id="empty"),
        pytest.param(mb(8), (make_service("x", 4),), 4096**2 / 8192, id="half-full"),
        pytest.param(mb(8), (make_service("x", 9),), 9216**2 / 8192 + OVERFLOW_PENALTY * 1024, id="fixed-overflow"),
        pytest.param(A400_MB, (ENRICH,), ENRICH.vram_mb**2 / A400_MB, id="shrinkable-pays-no-penalty"),
        pytest.param(mb(2.4), (ENRICH,), ENRICH.vram_mb**2 / mb(2.4) + OVERFLOW_PENALTY * (2048 + 512 - mb(2.4)),
                     id="below-minimum-pays-for-the-gap"),
    ],
)
def test_cost(capacity_mb: int, tenants: tuple[ServiceSpec, ...], cost: float) -> None:
    assert ledger_with(capacity_mb, *tenants).cost(KEY) == pytest.approx(cost)


def test_cost_rewards_spreading_in_proportion_to_capacity() -> None:
    small, large = make_slot(0, vram_gb=8), make_slot(1, vram_gb=24)
    spec = make_service("x", 8)

    def total(on: int) -> float:
        ledger = Ledger([small, large], 512)
        ledger.add(((small, large)[on].key,), tenant_for(make_service("base", 4)))
        ledger.add(((small, large)[1 - on].key,), tenant_for(spec))
        return ledger.cost(small.key) + ledger.cost(large.key)

    assert total(on=0) < total(on=1)  # the 8 GB job belongs on the 24 GB card


def test_cost_with_predicts_cost_after_add_and_remove() -> None:
    ledger = ledger_with(A400_MB, CLIP)
    tenant = tenant_for(ENRICH)

    predicted = ledger.cost_with(KEY, tenant)
    ledger.add((KEY,), tenant)
    assert ledger.cost(KEY) == pytest.approx(predicted)

    predicted = ledger.cost_with(KEY, tenant, -1)
    assert ledger.remove((KEY,), ENRICH.name) == tenant
    assert ledger.cost(KEY) == pytest.approx(predicted)
    assert ledger.tenants(KEY) == (tenant_for(CLIP),)


def test_demand_and_free_count_adjustable_services_at_their_estimate() -> None:
    ledger = ledger_with(A400_MB, ENRICH, CLIP)

    assert ledger.demand(KEY) == ENRICH.vram_mb + CLIP.vram_mb
    assert ledger.free(KEY) == A400_MB - ENRICH.vram_mb - CLIP.vram_mb
    assert ledger.capacity(KEY) == A400_MB
    assert KEY in ledger and GpuKey("box-a", 1) not in ledger


@pytest.mark.parametrize(
    ("spec", "override_mb", "tenant"),
    [
        pytest.param(CLIP, None, Tenant("ai-clip", 1229, 1229, adjustable=False), id="fixed"),
        pytest.param(ENRICH, None, Tenant("ai-enrichment", 6963, 2048, adjustable=True), id="adjustable"),
        pytest.param(ENRICH, mb(3), Tenant("ai-enrichment", 3072, 3072, adjustable=False), id="override-is-fixed"),
        pytest.param(make_service("tp", 40, gpus=2), None, Tenant("tp", 20480, 20480, adjustable=False),
                     id="half-on-each-of-two"),
        pytest.param(make_service("tp", 9, gpus=2, adjustable=True, min_gb=3), None,
                     Tenant("tp", 4608, 1536, adjustable=True), id="adjustable-on-two"),
        pytest.param(make_service("tp", 9, gpus=2, adjustable=True, min_gb=3), mb(5),
                     Tenant("tp", 2560, 2560, adjustable=False), id="override-split-over-two"),
    ],
)
def test_tenant_for(spec: ServiceSpec, override_mb: int | None, tenant: Tenant) -> None:
    assert tenant_for(spec, override_mb) == tenant
