"""Benchmarks: speed and quality targets, measured against baselines of the same run (docs/benchmarks.md)."""
