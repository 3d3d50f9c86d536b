"""Planner service: answers config reads, previews and saves over NATS; keeps gpu_devices current."""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import Engine

from services.planner.catalog import load_catalog
from services.planner.service import Planner, SaveResult
from services.planner.settings import PlannerSettings
from shared.bus.base import Bus, Delivery
from shared.contracts import (
    ConfigChanged,
    ConfigGetRequest,
    ConfigPutRequest,
    ConfigReply,
    ConfigRestoreRequest,
    ConfigSaved,
    Inventory,
    PlanPreview,
    PreviewRequest,
    ServiceName,
    utc_now,
)
from shared.database import DatabaseUnavailable, make_engine, until_available
from shared.errors import BusError
from shared.service import ServiceContext, StartFn, run
from shared.subjects import (
    CONFIG_CHANGED,
    INVENTORY_ALL,
    PLANNER_CONFIG_GET,
    PLANNER_CONFIG_PUT,
    PLANNER_CONFIG_RESTORE,
    PLANNER_PREVIEW,
    queue_group,
)

log = logging.getLogger("gpuplane.planner")


def make_planner(settings: PlannerSettings) -> Planner:
    """The planner over the catalog; a bad catalog fails here, at start-up, naming file and field."""
    catalog, source = load_catalog(settings.catalog_file, settings.compose_paths())
    log.info("catalog: %d GPU services from %s (%s)", len(catalog), source, ", ".join(s.name for s in catalog))
    return Planner(
        catalog, default_strategy=settings.default_strategy, headroom_gb=settings.vram_headroom_gb, clock=utc_now
    )


async def _open_store(planner: Planner, settings: PlannerSettings, engine: Engine) -> None:
    """Migrate and re-sync the YAML mirror; retried until the database answers."""
    from services.planner.store import ConfigStore

    store = ConfigStore(engine, settings.mirror_path)

    def open_store() -> None:
        store.migrate()
        store.sync_mirror()

    def problem(reason: str | None) -> None:
        planner.store_problem = reason

    await until_available(open_store, what="configuration store", retry_s=settings.database_retry_s, on_problem=problem)
    planner.store = store
    log.info("configuration store ready; YAML mirror at %s", settings.mirror_path)


def make_start(settings: PlannerSettings, planner: Planner) -> StartFn:
    async def start(bus: Bus, ctx: ServiceContext) -> None:
        last_recorded: dict[str, tuple[float, tuple[object, ...]]] = {}

        async def record(inv: Inventory) -> None:
            # gpu_devices follows the inventory, but unchanged readings are written only now and then.
            store = planner.store
            if store is None:
                return
            shape = tuple((g.index, g.uuid, g.name, g.vram_total_mb, g.healthy) for g in inv.gpus)
            at, previous = last_recorded.get(inv.host, (0.0, ()))
            if shape == previous and time.monotonic() - at < settings.device_record_interval_s:
                return
            try:
                await asyncio.to_thread(store.record_devices, inv, utc_now())
            except DatabaseUnavailable as exc:
                log.warning("gpu_devices not updated: %s", exc)
                return
            last_recorded[inv.host] = (time.monotonic(), shape)

        async def on_inventory(inv: Inventory, _: Delivery | None = None) -> None:
            if planner.inventories.apply(inv):
                await record(inv)

        async def on_get(_: ConfigGetRequest, __: Delivery) -> ConfigReply:
            return await planner.config()

        async def on_preview(req: PreviewRequest, _: Delivery) -> PlanPreview:
            return await planner.preview(req.strategy, req.assignments)

        async def announce(result: SaveResult) -> ConfigSaved:
            try:
                await bus.publish(CONFIG_CHANGED, ConfigChanged(config=result.saved, changes=result.reply.changes))
            except BusError as exc:
                log.warning("configuration revision %d saved, but its event was not published: %s",
                            result.saved.revision, exc)
            return result.reply

        async def on_put(req: ConfigPutRequest, _: Delivery) -> ConfigSaved:
            return await announce(await planner.save(req))

        async def on_restore(req: ConfigRestoreRequest, _: Delivery) -> ConfigSaved:
            return await announce(await planner.restore(req))

        await bus.subscribe(INVENTORY_ALL, Inventory, on_inventory)
        for inv in await bus.latest(INVENTORY_ALL, Inventory):
            await on_inventory(inv)
        group = queue_group(ServiceName.PLANNER)
        await bus.subscribe(PLANNER_CONFIG_GET, ConfigGetRequest, on_get, queue=group)
        await bus.subscribe(PLANNER_PREVIEW, PreviewRequest, on_preview, queue=group)
        await bus.subscribe(PLANNER_CONFIG_PUT, ConfigPutRequest, on_put, queue=group)
        await bus.subscribe(PLANNER_CONFIG_RESTORE, ConfigRestoreRequest, on_restore, queue=group)
        if settings.database_url:
            engine = make_engine(settings.database_url, pool_size=2)

            async def dispose() -> None:
                engine.dispose()

            ctx.on_stop(dispose)
            ctx.spawn(_open_store(planner, settings, engine), name="open-store")
        ctx.add_health(lambda: {
            "catalog": f"{len(planner.catalog)} services",
            "store": "ready" if planner.store is not None else f"not ready: {planner.store_problem}",
            "hosts": str(len(planner.inventories.all())),
        })

    return start


def main(settings: PlannerSettings) -> None:
    planner = make_planner(settings)
    run(ServiceName.PLANNER, settings, make_start(settings, planner))
