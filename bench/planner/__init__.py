"""``python -m bench.planner``: time and optimality of the planner's strategies.

Every strategy plans seeded random instances (:mod:`bench.planner.instances`); its objective is
compared with an exact branch-and-bound (:mod:`bench.planner.exact`) where that proves the
optimum in time, and its planning time with a trivial round-robin placement timed in the same run.
"""
