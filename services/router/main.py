"""Router service: balances inference across per-GPU worker pools. Settings in, connect, serve."""

from __future__ import annotations

from services.router.service import Router
from services.router.settings import RouterSettings
from shared.bus.base import Bus
from shared.contracts import ServiceName
from shared.modelgroups import load_model_catalog
from shared.service import ServiceContext, StartFn, run


def make_start(settings: RouterSettings) -> StartFn:
    """The router's part of the service shell (tests run it on their own bus)."""

    async def start(bus: Bus, ctx: ServiceContext) -> None:
        catalog = load_model_catalog(settings.model_groups_file)
        router = Router(bus, settings, catalog, ctx.instance)
        await router.start()
        ctx.add_health(router.health)
        ctx.on_stop(router.close)
        ctx.spawn(router.run_timers(), name="router-timers")
        ctx.spawn(router.watch_answers(), name="router-answers")

    return start


def main(settings: RouterSettings) -> None:
    run(ServiceName.ROUTER, settings, make_start(settings))
