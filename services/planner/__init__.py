"""gpuplane planner."""
