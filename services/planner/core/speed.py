"""How fast a GPU is, from its own figures: SM count x clock x FP32 lanes per SM, else its name.

Only the order matters (``latency_optimized`` puts the critical path on the fastest GPU), so
an estimate of peak FP32 TFLOPS is enough; the index never decides.
"""

from __future__ import annotations

from shared.contracts import Gpu

# FP32 lanes per SM by compute capability major.minor (CUDA programming guide, "arithmetic
# instructions" throughput table).
_LANES_PER_SM: dict[str, int] = {
    "6.0": 64, "6.1": 128, "6.2": 128,
    "7.0": 64, "7.2": 64, "7.5": 64,
    "8.0": 64, "8.6": 128, "8.7": 128, "8.9": 128,
    "9.0": 128, "10.0": 128, "10.3": 128, "12.0": 128, "12.1": 128,
}  # fmt: skip

# Peak FP32 TFLOPS of common cards (vendor data sheets), for backends that report no SM count.
# Matched as substrings of the NVML name, longest first.
KNOWN_MODELS_TFLOPS: dict[str, float] = {
    "B200": 80.0, "H200": 67.0, "H100 PCIe": 51.2, "H100": 67.0, "GH200": 67.0, "L40S": 91.6, "L40": 90.5,
    "L4": 30.3, "A100": 19.5, "A40": 37.4, "A30": 10.3, "A10": 31.2, "A2": 4.5, "V100": 15.7, "T4": 8.1,
    "RTX PRO 6000": 126.0, "RTX 6000 Ada": 91.1, "RTX A6000": 38.7, "RTX A5500": 34.1, "RTX A5000": 27.8,
    "RTX A4500": 23.7, "RTX A4000": 19.2, "RTX A2000": 8.0, "RTX A400": 2.7, "RTX A1000": 6.7,
    "RTX 5090": 104.8, "RTX 5080": 56.3, "RTX 5070 Ti": 43.9, "RTX 5070": 30.9,
    "RTX 4090": 82.6, "RTX 4080": 48.7, "RTX 4070 Ti": 40.1, "RTX 4070": 29.1, "RTX 4060 Ti": 22.1,
    "RTX 4060": 15.1, "RTX 3090 Ti": 40.0, "RTX 3090": 35.6, "RTX 3080 Ti": 34.1, "RTX 3080": 29.8,
    "RTX 3070": 20.3, "RTX 3060": 12.7, "RTX 2080 Ti": 13.4, "TITAN RTX": 16.3, "GTX 1080 Ti": 11.3,
}  # fmt: skip
_BY_LENGTH = sorted(KNOWN_MODELS_TFLOPS, key=len, reverse=True)


def estimate_tflops(gpu: Gpu) -> tuple[float, str]:
    """Estimated peak FP32 TFLOPS, and what the estimate rests on."""
    lanes = _LANES_PER_SM.get(gpu.compute_capability or "")
    if gpu.sm_count and gpu.max_sm_clock_mhz:
        per_sm = lanes or 64
        basis = "SM count x clock" + ("" if lanes else " (lanes per SM guessed)")
        return gpu.sm_count * per_sm * 2 * gpu.max_sm_clock_mhz / 1e6, basis
    for model in _BY_LENGTH:
        if model.lower() in gpu.name.lower():
            return KNOWN_MODELS_TFLOPS[model], "known model table"
    # Last resort: bigger cards of one generation are faster. Better than the index.
    return gpu.vram_total_mb / 1024, "VRAM size (no SM count, unknown model)"
