"""The gpuplane services; each runs as its own process."""
