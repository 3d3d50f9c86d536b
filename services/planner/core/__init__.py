"""The planner's pure core: strategies over a frozen snapshot. No I/O, no clock, no randomness."""
