"""How open_backend chooses: auto order, explicit names, and the registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pynvml
import pytest

from services.detector.backends import BACKEND_NAMES, BACKENDS, open_backend
from services.detector.backends.base import BackendUnavailable
from services.detector.backends.smi import SmiCommandFailed
from shared.contracts import InventorySource
from shared.errors import ConfigError
from tests.services.detector.fixtures import load

Runner = Callable[[list[str]], str]

REFERENCE = Path(__file__).resolve().parents[3] / "deploy" / "fleets" / "reference.yaml"

SMI_ANSWER = load("query_h100_header_units.csv")
NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


class FakeNvml:
    """Just enough NVML for choosing: init succeeds or fails like the real one, no GPUs."""

    def __init__(self, init_error: int | None = None) -> None:
        self.init_error = init_error

    def module(self) -> ModuleType:
        fake = ModuleType("pynvml")
        for name, value in vars(pynvml).items():
            if name.startswith(("NVML_", "NVMLError")):
                setattr(fake, name, value)
        fake.nvmlInit = self.init
        fake.nvmlShutdown = lambda: None
        fake.nvmlDeviceGetCount = lambda: 0
        return fake

    def init(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)


def smi_ok(argv: list[str]) -> str:
    return "" if argv[1] == "topo" else SMI_ANSWER


def smi_no_driver(argv: list[str]) -> str:
    raise SmiCommandFailed(argv, 9, NO_DRIVER)


def smi_missing(argv: list[str]) -> str:
    raise BackendUnavailable("nvidia-smi: not found on PATH")


NVML_OK = FakeNvml()
NVML_NO_DRIVER = FakeNvml(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
NVML_NO_LIBRARY = FakeNvml(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


@pytest.mark.parametrize(
    ("nvml", "runner", "fleet", "name", "problem_words"),
    [
        pytest.param(NVML_OK, smi_ok, None, "nvml", [], id="nvml first"),
        pytest.param(
            NVML_NO_DRIVER, smi_ok, None, "nvidia-smi", [], id="nvidia-smi when nvml is unavailable"
        ),
        pytest.param(
            NVML_NO_LIBRARY,
            smi_missing,
            None,
            "none",
            [["NVML Shared Library Not Found"], ["nvidia-smi: not found on PATH"]],
            id="none listing both problems",
        ),
        pytest.param(
            NVML_NO_DRIVER,
            smi_no_driver,
            None,
            "none",
            [["NVML_ERROR_DRIVER_NOT_LOADED"], ["nvidia-smi", "couldn't communicate with the NVIDIA driver"]],
            id="driver missing for both",
        ),
        pytest.param(NVML_OK, smi_ok, REFERENCE, "simulated", [], id="a fleet file means simulated"),
    ],
)
def test_auto(
    nvml: FakeNvml, runner: Runner, fleet: Path | None, name: str, problem_words: list[list[str]]
) -> None:
    backend = open_backend("auto", host="box", fleet=fleet, nvml_module=nvml.module(), runner=runner)
    try:
        assert backend.NAME == name
        scans = backend.scan()
        if name == "none":
            (scan,) = scans
            assert (scan.host, scan.source, scan.gpus) == ("box", InventorySource.NONE, ())
            assert len(scan.problems) == len(problem_words)
            for problem, words in zip(scan.problems, problem_words, strict=True):
                for word in words:
                    assert word in problem
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("choice", "nvml", "runner", "error"),
    [
        pytest.param("nvml", NVML_NO_DRIVER, smi_ok, "Driver Not Loaded", id="nvml"),
        pytest.param("nvidia-smi", NVML_OK, smi_no_driver, "couldn't communicate", id="nvidia-smi"),
    ],
)
def test_explicit_choice_that_cannot_open(choice: str, nvml: FakeNvml, runner: Runner, error: str) -> None:
    with pytest.raises(BackendUnavailable, match=error):
        open_backend(choice, host="box", nvml_module=nvml.module(), runner=runner)


@pytest.mark.parametrize(
    ("choice", "fleet", "name"),
    [
        ("nvml", None, "nvml"),
        ("nvidia-smi", None, "nvidia-smi"),
        ("simulated", REFERENCE, "simulated"),
        ("none", None, "none"),
    ],
)
def test_explicit_choice(choice: str, fleet: Path | None, name: str) -> None:
    backend = open_backend(choice, host="box", fleet=fleet, nvml_module=NVML_OK.module(), runner=smi_ok)
    assert backend.NAME == name


def test_explicit_none_says_detection_is_off() -> None:
    (scan,) = open_backend("none", host="box").scan()
    assert scan.gpus == ()
    assert "turned off" in scan.problems[0]


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        open_backend("cuda", host="box")
    for name in BACKEND_NAMES:
        assert name in str(raised.value)


def test_simulated_needs_a_fleet() -> None:
    with pytest.raises(ConfigError, match="fleet file"):
        open_backend("simulated", host="box")


def test_registry_covers_every_name_but_auto() -> None:
    assert set(BACKENDS) == set(BACKEND_NAMES) - {"auto"}
