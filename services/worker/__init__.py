"""gpuplane worker: inference on one device (``cuda:N`` or ``cpu``)."""
