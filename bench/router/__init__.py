"""The router benchmark: simulated fleets under open-loop load, every routing policy through the real core."""
