"""gpuplane orchestrator."""
