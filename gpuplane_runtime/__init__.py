"""Helpers for AI services' own code, inside their containers. Standard library only.

``gpu.py`` is self-contained: copy that one file into an image to use it without installing gpuplane.
"""

from .gpu import (
    ChainProbe,
    GpuEnvError,
    GpuProbe,
    NoGpuAvailable,
    NvidiaSmiProbe,
    NvmlProbe,
    TargetGpu,
    TorchProbe,
    assigned_gpus,
    default_probe,
    get_target_gpu,
    tensor_parallel_size,
    vram_budget_gb,
)

__all__ = [
    "ChainProbe",
    "GpuEnvError",
    "GpuProbe",
    "NoGpuAvailable",
    "NvidiaSmiProbe",
    "NvmlProbe",
    "TargetGpu",
    "TorchProbe",
    "assigned_gpus",
    "default_probe",
    "get_target_gpu",
    "tensor_parallel_size",
    "vram_budget_gb",
]
