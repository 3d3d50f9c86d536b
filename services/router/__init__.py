"""gpuplane router."""
