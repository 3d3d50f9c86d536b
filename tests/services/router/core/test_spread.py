"""Equal workers share the work under every policy: ties go to the rng, not to a worker id.

Each run places 1000 requests on two identical GPU workers through ``Pools.place`` with a closed
loop of ``connections`` clients (a client sends its next request when its answer is in), answers
arriving in a random order; ``on_sent``/``on_done`` make the loads rise and fall as in the router.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from services.router.core.model import Placement
from services.router.core.policies import POLICIES, make_policy
from shared.contracts import WorkerStatus
from tests.builders import make_placement_request, make_worker_status
from tests.services.router.core.helpers import pools_of

MODEL, GROUP = "model-a", "group-a"
PLACEMENTS = 1000
WORST_SHARE = 0.4
"""No worse than 60/40."""


def twin(worker_id: str, index: int, slots: int) -> WorkerStatus:
    # Measured, holding the group: the two are equal in every figure a policy looks at.
    return make_worker_status(
        worker_id, device=f"cuda:{index}", slots=slots, groups=(GROUP,), latency_avg_s=0.5, request_count=10
    )


def placements_per_worker(policy_name: str, *, slots: int, connections: int, seed: int = 0) -> Counter[str]:
    pools = pools_of(twin("w0", 0, slots), twin("w1", 1, slots), worker_queue_limit=1000)
    policy, rng, answers = make_policy(policy_name), random.Random(seed), random.Random(seed + 1)
    now = 1.0
    outstanding: list[str] = []
    served: Counter[str] = Counter()
    for index in range(PLACEMENTS):
        while len(outstanding) >= connections:
            pools.on_done(outstanding.pop(answers.randrange(len(outstanding))), now, ok=True)
        decision = pools.place(make_placement_request(MODEL, group=GROUP, request_id=f"r{index}"), now, policy, rng)
        assert isinstance(decision, Placement), decision
        pools.on_sent(decision.worker_id, now)
        outstanding.append(decision.worker_id)
        served[decision.worker_id] += 1
    return served


SCENARIOS: list[Any] = [
    pytest.param(1, 1, id="one-at-a-time"),
    pytest.param(1, 3, id="three-connections-one-slot"),
    pytest.param(4, 5, id="five-connections-four-slots"),
    pytest.param(32, 32, id="32-connections-32-slots"),
    pytest.param(1, 32, id="32-connections-one-slot"),
]


@pytest.mark.parametrize("policy_name", sorted(POLICIES))
@pytest.mark.parametrize(("slots", "connections"), SCENARIOS)
def test_two_equal_workers_share_the_work(policy_name: str, slots: int, connections: int) -> None:
    served = placements_per_worker(policy_name, slots=slots, connections=connections)

    assert sum(served.values()) == PLACEMENTS
    assert min(served["w0"], served["w1"]) >= WORST_SHARE * PLACEMENTS, dict(served)


@pytest.mark.parametrize("policy_name", sorted(POLICIES))
def test_the_spread_is_deterministic_for_a_seed(policy_name: str) -> None:
    runs = [placements_per_worker(policy_name, slots=2, connections=4, seed=9) for _ in range(2)]
    assert runs[0] == runs[1]
