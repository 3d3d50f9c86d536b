"""Where the placed services that serve an OpenAI-compatible API run: the agents' view of the project.

A compose service says it serves one in its ``x-gpuplane`` block::

    x-gpuplane: {model: SmolLM2-135M-Instruct, vram_gb: 0.6, api: {port: 8080, models: [smollm2-135m], kind: llamacpp}}

Its endpoint is its running container's published port for ``api.port`` (the container's own address
where the port is not published), on the GPU of its applied assignment. Pure: the shell hands in the
compose documents, the containers and the saved configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from services.orchestrator.core.model import ContainerView
from shared.contracts import GpuConfig, ServiceApi, ServiceEndpoint, ServiceEndpoints
from shared.errors import ConfigError

EXTENSION_KEY = "x-gpuplane"
ANY_ADDRESS = ("", "0.0.0.0", "::")


def api_specs(documents: Sequence[Mapping[str, Any]]) -> dict[str, ServiceApi]:
    """Service -> its API, from every compose document (a later document overrides an earlier one)."""
    found: dict[str, ServiceApi] = {}
    for doc in documents:
        services = doc.get("services")
        if not isinstance(services, Mapping):
            continue
        for name, body in services.items():
            extension = body.get(EXTENSION_KEY) if isinstance(body, Mapping) else None
            raw = extension.get("api") if isinstance(extension, Mapping) else None
            if raw is None:
                continue
            try:
                found[str(name)] = ServiceApi.model_validate(raw)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
                raise ConfigError(f"services.{name}.{EXTENSION_KEY}.api: {problems}") from None
    return found


def device_of(service: str, container: ContainerView, config: GpuConfig | None) -> str | None:
    """``cuda:N`` of the service's first assigned GPU: from the ids its container was given
    (``GPUPLANE_ASSIGNED_GPUS``: indices or UUIDs), read against the saved assignments."""
    assignments = config.assignments if config else ()
    # A service saved without UUIDs (an older planner) has fewer of them than indices: pair what there is.
    uuids = {uuid: index for a in assignments for uuid, index in zip(a.gpu_uuids, a.gpu_indices, strict=False)}
    for given in container.env.get("GPUPLANE_ASSIGNED_GPUS", "").split(","):
        given = given.strip()
        if given.isdigit():
            return f"cuda:{int(given)}"
        if given in uuids:
            return f"cuda:{uuids[given]}"
    assignment = next((a for a in assignments if a.service == service), None)
    if assignment is not None and assignment.gpu_indices:
        return f"cuda:{assignment.gpu_indices[0]}"
    return None


def url_of(api: ServiceApi, container: ContainerView) -> str | None:
    """The API's base URL as seen from this host: the published port, else the container's address."""
    published = container.ports.get(api.port)
    if published is not None:
        address, port = published
        where = "127.0.0.1" if address in ANY_ADDRESS else address
    elif container.addresses:
        where, port = container.addresses[0], api.port
    else:
        return None
    host = f"[{where}]" if ":" in where else where
    return f"http://{host}:{port}{api.path.rstrip('/')}"


def endpoints_of(
    host: str,
    specs: Mapping[str, ServiceApi],
    containers: Sequence[ContainerView],
    config: GpuConfig | None,
) -> ServiceEndpoints:
    """The endpoints of every service with an API whose container runs (healthy, where it has a check)."""
    endpoints: list[ServiceEndpoint] = []
    problems: list[str] = []
    for service, api in sorted(specs.items()):
        mine = [c for c in containers if c.service == service]
        live = [c for c in mine if c.running and c.health in (None, "healthy")]
        if not live:
            problems.append(f"{service}: " + ("not running" if not mine else f"not ready ({mine[0].status})"))
            continue
        container = live[0]
        url, device = url_of(api, container), device_of(service, container, config)
        if url is None:
            problems.append(f"{service}: port {api.port} is not published and the container has no address")
            continue
        if device is None:
            problems.append(f"{service}: no GPU assigned")
            continue
        endpoints.append(
            ServiceEndpoint(
                service=service, host=host, device=device, url=url, models=api.models, kind=api.kind,
                container=container.id[:12],
            )
        )
    return ServiceEndpoints(host=host, endpoints=tuple(endpoints), problems=tuple(problems))
