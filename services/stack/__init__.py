"""gpuplane stack."""
