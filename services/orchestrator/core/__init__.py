"""The orchestrator's pure core: override rendering, reconciliation, health judgement. No I/O."""
