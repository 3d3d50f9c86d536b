"""The service catalog: services.yml, or compose files annotated with x-gpuplane or gpuplane.* labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.planner.catalog import catalog_from_compose, load_catalog, parse_catalog
from services.planner.core.model import Precision, Role, ServiceSpec, mb
from shared.errors import ConfigError
from tests.builders import REFERENCE_CATALOG_FILE, make_service, reference_catalog

CLIP = make_service("ai-clip", 1.2, model="CLIP ViT-L", role=Role.EMBEDDING)


def test_the_shipped_catalog_is_the_reference_stack() -> None:
    specs, source = load_catalog(REFERENCE_CATALOG_FILE)

    assert source == str(REFERENCE_CATALOG_FILE)
    assert specs == reference_catalog()
    assert [(s.name, s.vram_mb, s.role, s.critical_path, s.budget_adjustable, s.min_vram_mb) for s in specs] == [
        ("ai-llm", mb(21.7), Role.LLM, True, False, None),
        ("ai-yolo26", mb(0.65), Role.VISION, True, False, None),
        ("ai-florence", mb(1.5), Role.VISION, False, False, None),
        ("ai-clip", mb(1.2), Role.EMBEDDING, False, False, None),
        ("ai-enrichment", mb(6.8), Role.OTHER, False, True, mb(2.0)),
    ]
    assert specs[0].label == "Nemotron-30B"


def test_parse_catalog_reads_every_key() -> None:
    data = {
        "services": {
            "ai-vllm": {
                "model": "Llama-3.3-70B AWQ",
                "short_name": "Llama-70B",
                "vram_gb": 40,
                "budget_adjustable": True,
                "min_vram_gb": 30,
                "critical_path": True,
                "role": "llm",
                "gpus": 2,
                "precision": "bf16",
            },
            "ai-clip": {"model": "CLIP ViT-L", "vram_gb": 1.2, "role": "embedding"},
        }
    }

    assert parse_catalog(data, "services.yml") == (
        ServiceSpec("ai-vllm", "Llama-3.3-70B AWQ", mb(40), True, mb(30), True, Role.LLM, 2, Precision.BF16,
                    "Llama-70B"),
        CLIP,
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"services": {"ai-x": {"model": "m", "vram_gb": -1}}},
                     "services.yml: services.ai-x: vram_gb: Input should be greater than 0", id="negative-vram"),
        pytest.param({"services": {"ai-x": {"model": "m", "vram_gb": 0}}},
                     "services.yml: services.ai-x: vram_gb: Input should be greater than 0", id="zero-vram"),
        pytest.param({"services": {"ai-x": {"model": "m", "vram_gb": 1, "vram": 2}}},
                     "services.yml: services.ai-x: vram: Extra inputs are not permitted", id="unknown-key"),
        pytest.param({"services": {"ai-x": {"model": "m", "vram_gb": 6.8, "budget_adjustable": True,
                                            "min_vram_gb": 8}}},
                     "services.yml: services.ai-x: entry: Value error, min_vram_gb (8.0) is above vram_gb (6.8)",
                     id="minimum-above-estimate"),
        pytest.param({"services": {"ai-x": {"vram_gb": 1}}}, "services.yml: services.ai-x: model: Field required",
                     id="model-missing"),
        pytest.param({"services": {"ai-x": {"model": "m", "vram_gb": 1, "role": "boss"}}},
                     "services.yml: services.ai-x: role: Input should be 'llm', 'vision', 'embedding' or 'other'",
                     id="unknown-role"),
        pytest.param({"services": {"ai-x": {"model": "m", "vram_gb": 1, "gpus": 0}}},
                     "services.yml: services.ai-x: gpus: Input should be greater than or equal to 1", id="zero-gpus"),
        pytest.param({"services": {"ai-x": {"model": "m", "vram_gb": 1, "precision": "fp8"}}},
                     "services.yml: services.ai-x: precision: Input should be 'fp16' or 'bf16'",
                     id="unknown-precision"),
        pytest.param({"services": {"ai-x": None}},
                     "services.yml: services.ai-x: entry: Input should be a valid dictionary", id="empty-entry"),
        pytest.param({"services": {}}, "services.yml: 'services' is empty; list at least one GPU service", id="empty"),
        pytest.param({"gpus": []}, "services.yml: expected a mapping with a 'services' mapping at the top",
                     id="no-services-key"),
        pytest.param(None, "services.yml: expected a mapping with a 'services' mapping at the top", id="empty-file"),
    ],
)
def test_parse_catalog_errors_name_the_file_and_field(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_catalog(data, "services.yml")

    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"x-gpuplane": {"model": "CLIP ViT-L", "vram_gb": 1.2, "role": "embedding"}}, CLIP,
                     id="extension"),
        pytest.param({"labels": ["gpuplane.vram_gb=1.2", "gpuplane.model=CLIP ViT-L", "gpuplane.role=embedding",
                                 "traefik.enable=true"]}, CLIP, id="label-list"),
        pytest.param({"labels": {"gpuplane.vram_gb": "1.2", "gpuplane.model": "CLIP ViT-L",
                                 "gpuplane.role": "embedding", "com.example.team": "vision"}},
                     CLIP, id="label-mapping"),
        pytest.param({"labels": {"gpuplane.vram_gb": 1.2, "gpuplane.model": "CLIP ViT-L",
                                 "gpuplane.role": "embedding"}}, CLIP, id="label-mapping-typed-values"),
        pytest.param({"labels": ["gpuplane.vram_gb=9", "gpuplane.model=old"],
                      "x-gpuplane": {"model": "CLIP ViT-L", "vram_gb": 1.2, "role": "embedding"}}, CLIP,
                     id="extension-wins-over-labels"),
        pytest.param({"labels": ["gpuplane.model=Zoo", "gpuplane.vram_gb=6.8", "gpuplane.budget_adjustable=true",
                                 "gpuplane.min_vram_gb=2", "gpuplane.gpus=1", "gpuplane.critical_path=false"]},
                     make_service("ai-clip", 6.8, adjustable=True, min_gb=2, model="Zoo"), id="label-strings-coerced"),
    ],
)
def test_catalog_from_compose_reads_annotations(body: dict[str, object], expected: ServiceSpec) -> None:
    compose = {"services": {"ai-clip": {"image": "clip:latest", **body}, "postgres": {"image": "postgres:17"}}}

    assert catalog_from_compose([("compose.yml", compose)]) == (expected,)


def test_later_compose_files_override_earlier_ones() -> None:
    base = {"services": {"ai-clip": {"image": "clip", "x-gpuplane": {"model": "CLIP ViT-L", "vram_gb": 1.0}}}}
    override = {"services": {"ai-clip": {"x-gpuplane": {"vram_gb": 1.2, "role": "embedding"}}, "db": {"image": "pg"}}}

    assert catalog_from_compose([("compose.yml", base), ("compose.gpu.yml", override)]) == (CLIP,)


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        pytest.param([("compose.yml", {"services": {"ai-x": {"x-gpuplane": {"model": "m", "vram_gb": -2}}}})],
                     "compose.yml: services.ai-x: vram_gb: Input should be greater than 0", id="negative-vram"),
        pytest.param([("compose.yml", {"services": {"ai-x": {"labels": ["gpuplane.model=m", "gpuplane.vram_gb=1",
                                                                         "gpuplane.vram=1"]}}})],
                     "compose.yml: services.ai-x: vram: Extra inputs are not permitted", id="unknown-label"),
        pytest.param([("compose.yml", {"services": {"ai-x": {"x-gpuplane": {"model": "m", "vram_gb": 2,
                                                                             "min_vram_gb": 3}}}})],
                     "compose.yml: services.ai-x: entry: Value error, min_vram_gb (3.0) is above vram_gb (2.0)",
                     id="minimum-above-estimate"),
        pytest.param([("compose.yml", {"services": {"ai-x": {"x-gpuplane": "21.7"}}})],
                     "compose.yml: services.ai-x.x-gpuplane must be a mapping", id="extension-not-a-mapping"),
        pytest.param([("compose.yml", {"services": {"ai-x": {"labels": ["gpuplane.vram_gb=lots",
                                                                         "gpuplane.model=m"]}}})],
                     "compose.yml: services.ai-x: vram_gb: Input should be a valid number", id="label-not-a-number"),
        pytest.param(
            [("compose.yml", {"services": {"ai-x": {"x-gpuplane": {"model": "m", "vram_gb": 1}}}}),
             ("compose.gpu.yml", {"services": {"ai-x": {"x-gpuplane": {"vram_gb": -1}}}})],
            "compose.gpu.yml: services.ai-x: vram_gb: Input should be greater than 0",
            id="bad-value-in-the-override-file",
        ),
        pytest.param(
            [("compose.yml", {"services": {"ai-x": {"x-gpuplane": {"model": "m", "vram_gb": 1, "vram": 2}}}}),
             ("compose.gpu.yml", {"services": {"ai-x": {"x-gpuplane": {"role": "vision"}}}})],
            "compose.yml: services.ai-x: vram: Extra inputs are not permitted",
            id="bad-key-in-the-base-file",
        ),
    ],
)
def test_compose_errors_name_the_file_and_field(documents: list[tuple[str, object]], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        catalog_from_compose(documents)

    assert str(caught.value).startswith(message), str(caught.value)


def test_compose_files_without_annotations_give_an_empty_catalog() -> None:
    documents = [("compose.yml", {"services": {"db": {"image": "pg", "labels": ["app=db"]}, "odd": None}}),
                 ("notes.yml", ["not", "compose"])]

    assert catalog_from_compose(documents) == ()


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_load_catalog_prefers_annotated_compose_files(tmp_path: Path) -> None:
    compose = write(tmp_path / "compose.yml", {"services": {"ai-clip": {"image": "clip", "labels": [
        "gpuplane.model=CLIP ViT-L", "gpuplane.vram_gb=1.2", "gpuplane.role=embedding"]}}})
    gpu = write(tmp_path / "compose.gpu.yml", {"services": {"db": {"image": "pg"}}})

    specs, source = load_catalog(REFERENCE_CATALOG_FILE, [compose, gpu])

    assert specs == (CLIP,)
    assert source == f"{compose}, {gpu}"


def test_load_catalog_falls_back_to_the_catalog_file_when_compose_says_nothing(tmp_path: Path) -> None:
    compose = write(tmp_path / "compose.yml", {"services": {"db": {"image": "pg"}}})

    specs, source = load_catalog(REFERENCE_CATALOG_FILE, [compose])

    assert specs == reference_catalog()
    assert source == str(REFERENCE_CATALOG_FILE)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "cannot read {path}", id="missing"),
        pytest.param("services: [unclosed\n", "{path} is not valid YAML", id="bad-yaml"),
        pytest.param("services:\n  ai-x: {model: m, vram_gb: -1}\n", "{path}: services.ai-x: vram_gb:", id="bad-entry"),
    ],
)
def test_load_catalog_errors_name_the_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "services.yml"
    if content is not None:
        path.write_text(content)

    with pytest.raises(ConfigError) as caught:
        load_catalog(path)

    assert str(caught.value).startswith(message.format(path=path)), str(caught.value)
