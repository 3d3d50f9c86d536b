"""gpuplane detector."""
