"""Where placed services with an OpenAI-compatible API run: compose blocks, containers and assignments."""

from __future__ import annotations

from typing import Any

import pytest

from services.orchestrator.core.endpoints import api_specs, endpoints_of, url_of
from services.orchestrator.core.model import ContainerView
from shared.contracts import GpuConfig, ServiceApi, ServiceAssignment
from shared.errors import ConfigError

API = ServiceApi(port=8080, models=("smollm2-135m",), kind="llamacpp")


def container(service: str = "ai-chat", **changes: Any) -> ContainerView:
    values: dict[str, Any] = {
        "id": "0123456789abcdef",
        "name": f"aistack_{service}_1",
        "service": service,
        "status": "running",
        "running": True,
        "env": {"GPUPLANE_ASSIGNED_GPUS": "1"},
        "ports": {8080: ("127.0.0.1", 18481)},
        **changes,
    }
    return ContainerView(**values)


def config(*uuids_by_index: tuple[int, str]) -> GpuConfig:
    return GpuConfig(
        strategy="vram_based",
        saved=True,
        assignments=tuple(
            ServiceAssignment(
                service="ai-chat",
                model="m",
                host="box",
                gpu_indices=(i,),
                gpu_uuids=(u,),
                vram_estimate_gb=0.25,
                placed_by="vram_based",
            )
            for i, u in uuids_by_index
        ),
    )


def test_api_blocks_come_from_x_gpuplane_and_a_later_file_wins() -> None:
    first = {"services": {"ai-chat": {"x-gpuplane": {"api": {"port": 8000, "models": ["a"]}}}, "other": {}}}
    later = {"services": {"ai-chat": {"x-gpuplane": {"api": {"port": 8080, "models": ["b"], "kind": "vllm"}}}}}
    found = api_specs([first, later])
    assert list(found) == ["ai-chat"]
    assert found["ai-chat"] == ServiceApi(port=8080, models=("b",), kind="vllm")


@pytest.mark.parametrize(
    ("api", "wrong"),
    [
        ({"models": ["a"]}, "port"),
        ({"port": 8080, "models": []}, "models"),
        ({"port": 8080, "models": ["a"], "kind": "magic"}, "kind"),
        ({"port": 8080, "models": ["a"], "path": "v1; rm"}, "path"),
    ],
)
def test_a_bad_api_block_names_the_service_and_the_field(api: dict[str, Any], wrong: str) -> None:
    with pytest.raises(ConfigError, match=rf"services\.ai-chat\.x-gpuplane\.api: .*{wrong}"):
        api_specs([{"services": {"ai-chat": {"x-gpuplane": {"api": api}}}}])


@pytest.mark.parametrize(
    ("view", "url"),
    [
        (container(), "http://127.0.0.1:18481/v1"),
        (container(ports={8080: ("0.0.0.0", 9000)}), "http://127.0.0.1:9000/v1"),
        (container(ports={8080: ("", 9000)}), "http://127.0.0.1:9000/v1"),
        (container(ports={}, addresses=("10.88.0.5",)), "http://10.88.0.5:8080/v1"),
        (container(ports={}, addresses=("fd00::5",)), "http://[fd00::5]:8080/v1"),
        (container(ports={}), None),
    ],
)
def test_the_url_is_the_published_port_else_the_containers_address(view: ContainerView, url: str | None) -> None:
    assert url_of(API, view) == url


@pytest.mark.parametrize(
    ("env", "saved", "device"),
    [
        ({"GPUPLANE_ASSIGNED_GPUS": "1"}, None, "cuda:1"),
        ({"GPUPLANE_ASSIGNED_GPUS": "GPU-b"}, config((1, "GPU-b")), "cuda:1"),
        ({"GPUPLANE_ASSIGNED_GPUS": "GPU-x,0"}, config((1, "GPU-b")), "cuda:0"),
        ({}, config((0, "GPU-a")), "cuda:0"),
    ],
)
def test_the_device_is_the_containers_assigned_gpu(env: dict[str, str], saved: GpuConfig | None, device: str) -> None:
    found = endpoints_of("box", {"ai-chat": API}, [container(env=env)], saved)
    assert [e.device for e in found.endpoints] == [device]


def test_endpoints_name_the_service_its_models_and_container_and_say_why_others_are_missing() -> None:
    specs = {"ai-chat": API, "ai-vllm": API, "ai-starting": API, "ai-nogpu": API}
    containers = [
        container(),
        container("ai-starting", health="starting"),
        container("ai-nogpu", env={}),
    ]
    found = endpoints_of("box", specs, containers, None)
    [endpoint] = found.endpoints
    assert (endpoint.service, endpoint.host, endpoint.url, endpoint.models, endpoint.kind, endpoint.container) == (
        "ai-chat",
        "box",
        "http://127.0.0.1:18481/v1",
        ("smollm2-135m",),
        "llamacpp",
        "0123456789ab",
    )
    assert found.problems == (
        "ai-nogpu: no GPU assigned",
        "ai-starting: not ready (running)",
        "ai-vllm: not running",
    )
