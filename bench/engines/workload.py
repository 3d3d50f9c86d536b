"""The workload: one shared system prompt, conversations of a few turns, and when each conversation starts.

Everything comes from the seed, so each variant of a run gets the same conversations, the same user
messages, the same think times and the same arrival times. A conversation's content depends on the seed
and its index only, and the arrival times on the seed and the rate, so changing the rate leaves the
conversations as they were.

A turn's request carries the whole history: the system prompt, then every earlier user message with the
assistant's actual answer to it, then the new user message. The answers are not known in advance (the
engine writes them), so the client builds each request when the previous answer has arrived.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

# A support assistant's instructions: plausible, varied, and long enough together for several hundred tokens.
PRODUCT = "Northwind Compute"
RULES = (
    "Greet the user once at the start of a conversation and never again.",
    "Answer in plain English, in short paragraphs, unless the user asks for a list or a table.",
    "Keep every answer under one hundred and fifty words unless the user asks for more detail.",
    "When a question is ambiguous, ask one clarifying question before answering.",
    "Never invent a command, a flag, a price or a limit; say that you do not know and point to the documentation.",
    "Quote command names, file paths and setting names in backticks.",
    "When the user reports an error, ask for the exact message and the command that produced it.",
    "Prefer the web console for one-off changes and the command line for anything that should be repeatable.",
    "Explain what a command does before suggesting that the user runs it.",
    "Warn the user before any step that deletes data, restarts a service or interrupts running jobs.",
    "Do not ask for passwords, API keys or tokens, and tell the user to rotate any secret they paste.",
    "If a request is about billing, explain the general rules and send the user to the billing team for their account.",
    "Refer to GPUs by their index and model, for example GPU 0 (A100 80 GB).",
    "When comparing options, give the trade-off in one sentence for each option.",
    "Assume the user runs the latest release unless they say otherwise.",
    "If the user writes in another language, answer in that language.",
    "Do not speculate about outages; point to the status page and the incident channel.",
    "Summarize long answers with one sentence at the end that says what to do next.",
    "When memory is short on a GPU, suggest a smaller model or a quantized one before a bigger GPU.",
    "Explain queueing in terms of requests waiting and requests running, not internal component names.",
    "When a user asks how routing works, explain that requests go to the GPU most likely to answer first.",
    "When the user asks for an example, give exactly one example, complete and runnable.",
    "Use metric units and twenty-four hour times in UTC.",
    "Never promise a delivery date for a feature.",
    "When a user is frustrated, acknowledge it in one short sentence and then help.",
    "If the question is outside the platform, say so briefly and answer only if it is a general computing question.",
    "For security questions, describe the recommended setting and why it is the default.",
    "Mention the relevant page of the documentation by its title when one exists.",
    "When numbers are involved, show the calculation in one line.",
    "Do not repeat the user's question back to them.",
    "Keep a friendly, professional tone, without exclamation marks.",
    "When asked about performance, separate the time to the first token from the time to the whole answer.",
    "When a model fails to load, check the free GPU memory first, then the model file, then the logs.",
    "Explain that long shared prompts are cheaper when the same engine serves them again, because of its cache.",
    "When the user asks for a recommendation, give one and say what would change it.",
    "If you are unsure whether a feature exists, say so instead of guessing.",
    "Answer follow-up questions in the context of the earlier turns of the conversation.",
    "When a user pastes a log, point to the first line that shows the problem.",
    "Suggest the health endpoint when the user wants to know whether a service is up.",
    "When asked about limits, distinguish the hard limits from the defaults that can be changed.",
)

TOPICS = (
    "my inference endpoint",
    "the GPU scheduler",
    "model loading",
    "API keys",
    "the web console",
    "the request queue",
    "streaming answers",
    "embedding models",
    "GPU memory",
    "the audit log",
    "a failed deployment",
    "rate limits",
    "the metrics page",
    "a slow first token",
    "model groups",
    "backups",
)
OPENERS = (
    "I have a question about {topic}.",
    "Can you help me with {topic}?",
    "Something is wrong with {topic}.",
    "I am new here and want to understand {topic}.",
    "Quick question on {topic}.",
)
QUESTIONS = (
    "How do I check that it is working?",
    "What setting controls this?",
    "Why would it be slower in the morning?",
    "What is the safest way to change it?",
    "Can you give me one example?",
    "What does the error mean?",
    "Is there a limit I should know about?",
    "How would you explain this to my manager?",
    "What should I look at first?",
    "Does this change if I add a second GPU?",
    "How long should that take?",
    "What happens to requests that are already running?",
)
FOLLOW_UPS = (
    "Thanks. And what if that does not help?",
    "Can you say that in fewer words?",
    "Which of those would you do first?",
    "Is that the default?",
    "What would go wrong if I skip that step?",
    "Does the same apply to {topic}?",
    "OK. How do I undo it later?",
    "Could you give the exact command?",
    "And how do I know it worked?",
    "Why is that better than the alternative?",
)


def system_prompt(seed: int, words: int = 420) -> str:
    """The assistant's instructions, about ``words`` words (near 1.3 tokens a word: 550 or so tokens).

    Rules are drawn without repeats while the pool lasts, in the seed's order, until the count is reached.
    """
    rng = random.Random(f"system-{seed}")
    pool = list(RULES)
    rng.shuffle(pool)
    lines = [
        f"You are the support assistant of {PRODUCT}, a service that runs AI models on shared GPUs for "
        "engineering teams. Follow these rules in every answer:",
    ]
    count = len(lines[0].split())
    index = 0
    while count < words:
        rule = pool[index % len(pool)]
        lines.append(f"{index + 1}. {rule}")
        count += len(lines[-1].split())
        index += 1
    lines.append("If two rules conflict, the one with the lower number wins.")
    return "\n".join(lines)


@dataclass(frozen=True)
class Turn:
    user: str
    """The user's message."""
    think_s: float
    """How long the user waits after the previous answer before sending this (0 for the first turn)."""


@dataclass(frozen=True)
class Conversation:
    index: int
    start_s: float
    """When its first turn is sent, from the start of the run."""
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Workload:
    seed: int
    system: str
    conversations: tuple[Conversation, ...]
    rate_per_s: float
    """Conversations started per second (the Poisson process's rate)."""
    window_s: float
    """Conversations start within [0, window_s)."""

    @property
    def requests(self) -> int:
        return sum(len(c.turns) for c in self.conversations)


def think_time(rng: random.Random, mean_s: float) -> float:
    """Exponential with mean ``mean_s``, kept within [0.2 * mean, 4 * mean] (no zero waits, no minute-long ones)."""
    return min(max(rng.expovariate(1.0 / mean_s), 0.2 * mean_s), 4.0 * mean_s) if mean_s > 0 else 0.0


def conversation_turns(
    seed: int, index: int, *, min_turns: int = 3, max_turns: int = 6, think_mean_s: float = 2.0
) -> tuple[Turn, ...]:
    """Conversation ``index``'s user messages and think times: from the seed and the index alone."""
    if not 1 <= min_turns <= max_turns:
        raise ValueError(f"turns: 1 <= min_turns <= max_turns, got {min_turns}, {max_turns}")
    rng = random.Random(f"conversation-{seed}-{index}")
    count = rng.randint(min_turns, max_turns)
    topic = rng.choice(TOPICS)
    first = f"{rng.choice(OPENERS).format(topic=topic)} {rng.choice(QUESTIONS)}"
    turns = [Turn(first, 0.0)]
    asked = {first}
    while len(turns) < count:
        pool = FOLLOW_UPS if rng.random() < 0.6 else QUESTIONS
        text = rng.choice(pool).format(topic=rng.choice(TOPICS))
        if text in asked:
            continue
        asked.add(text)
        turns.append(Turn(text, think_time(rng, think_mean_s)))
    return tuple(turns)


def arrivals(seed: int, rate_per_s: float, window_s: float) -> list[float]:
    """Start times of a Poisson process of rate ``rate_per_s`` within [0, window_s); the first at 0."""
    if rate_per_s <= 0 or window_s <= 0:
        raise ValueError("the rate and the window must be positive")
    rng = random.Random(f"arrivals-{seed}")
    times = [0.0]
    while True:
        at = times[-1] + rng.expovariate(rate_per_s)
        if at >= window_s:
            return times
        times.append(at)


def make_workload(
    seed: int,
    rate_per_s: float,
    window_s: float,
    *,
    system_words: int = 420,
    min_turns: int = 3,
    max_turns: int = 6,
    think_mean_s: float = 2.0,
) -> Workload:
    conversations = tuple(
        Conversation(
            i,
            at,
            conversation_turns(seed, i, min_turns=min_turns, max_turns=max_turns, think_mean_s=think_mean_s),
        )
        for i, at in enumerate(arrivals(seed, rate_per_s, window_s))
    )
    return Workload(seed, system_prompt(seed, system_words), conversations, rate_per_s, window_s)


def messages(system: str, history: Sequence[tuple[str, str]], user: str) -> list[dict[str, str]]:
    """A turn's chat messages: the system prompt, each earlier (user, assistant answer), the new message."""
    found = [{"role": "system", "content": system}]
    for asked, answered in history:
        found.append({"role": "user", "content": asked})
        found.append({"role": "assistant", "content": answered})
    found.append({"role": "user", "content": user})
    return found


def mean_turns(min_turns: int, max_turns: int) -> float:
    return (min_turns + max_turns) / 2


def conversation_rate(request_rate_per_s: float, min_turns: int, max_turns: int) -> float:
    """Conversations a second that make ``request_rate_per_s`` requests a second on average."""
    if request_rate_per_s <= 0 or not math.isfinite(request_rate_per_s):
        raise ValueError(f"a request rate is positive, not {request_rate_per_s}")
    return request_rate_per_s / mean_turns(min_turns, max_turns)
