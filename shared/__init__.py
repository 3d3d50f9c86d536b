"""What every gpuplane process shares: contracts, subjects, the bus, settings, database, telemetry."""

__version__ = "0.1.0"
