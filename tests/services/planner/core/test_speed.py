"""How fast a GPU is: SM count x clock x FP32 lanes, else the known-model table, else its size."""

from __future__ import annotations

import pytest

from services.planner.core.speed import estimate_tflops
from shared.contracts import Gpu
from tests.builders import make_gpu


@pytest.mark.parametrize(
    ("gpu", "tflops", "basis"),
    [
        pytest.param(make_gpu(0), 80 * 128 * 2 * 1665 / 1e6, "SM count x clock", id="a5500-sm-count"),
        pytest.param(make_gpu(0, name="NVIDIA RTX A400", sm_count=6, max_sm_clock_mhz=1762), 6 * 128 * 2 * 1762 / 1e6,
                     "SM count x clock", id="a400-sm-count"),
        pytest.param(make_gpu(0, name="NVIDIA H100 80GB HBM3", compute_capability="9.0", sm_count=132,
                              max_sm_clock_mhz=1980), 132 * 128 * 2 * 1980 / 1e6, "SM count x clock", id="h100-cc-9.0"),
        pytest.param(make_gpu(0, name="Tesla V100-SXM2-16GB", compute_capability="7.0", sm_count=80,
                              max_sm_clock_mhz=1530), 80 * 64 * 2 * 1530 / 1e6, "SM count x clock", id="v100-64-lanes"),
        pytest.param(make_gpu(0, compute_capability="13.7", sm_count=10, max_sm_clock_mhz=1000),
                     10 * 64 * 2 * 1000 / 1e6, "SM count x clock (lanes per SM guessed)", id="unknown-cc-guesses-64"),
        pytest.param(make_gpu(0, name="NVIDIA GeForce RTX 4090", sm_count=None, max_sm_clock_mhz=None), 82.6,
                     "known model table", id="table"),
        pytest.param(make_gpu(0, name="NVIDIA GeForce RTX 3090 Ti", sm_count=None), 40.0, "known model table",
                     id="longest-name-wins-3090-ti"),
        pytest.param(make_gpu(0, name="NVIDIA H100 PCIe", sm_count=None), 51.2, "known model table",
                     id="longest-name-wins-h100-pcie"),
        pytest.param(make_gpu(0, name="NVIDIA L40S", sm_count=None), 91.6, "known model table", id="l40s-not-l4"),
        pytest.param(make_gpu(0, name="NVIDIA RTX A400", sm_count=None), 2.7, "known model table", id="a400-not-a40"),
        pytest.param(make_gpu(0, name="NVIDIA RTX A4000", sm_count=None), 19.2, "known model table",
                     id="a4000-not-a400"),
        pytest.param(make_gpu(0, name="NVIDIA A100-SXM4-80GB", sm_count=None), 19.5, "known model table",
                     id="a100-not-a10"),
        pytest.param(make_gpu(0, name="nvidia geforce rtx 4060 ti", sm_count=None), 22.1, "known model table",
                     id="case-insensitive"),
        pytest.param(make_gpu(0, name="NVIDIA GeForce RTX 4090", max_sm_clock_mhz=None), 82.6, "known model table",
                     id="sm-count-without-clock-uses-table"),
        pytest.param(make_gpu(0, name="Mystery Accelerator", vram_total_mb=16384, sm_count=None), 16.0,
                     "VRAM size (no SM count, unknown model)", id="unknown-model-by-size"),
    ],
)
def test_estimate_tflops(gpu: Gpu, tflops: float, basis: str) -> None:
    assert estimate_tflops(gpu) == (pytest.approx(tflops), basis)

