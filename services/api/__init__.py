"""gpuplane api."""
