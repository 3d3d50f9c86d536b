from __future__ import annotations

import math

import pytest

from services.worker.core.responses import (
    choice_count,
    embedding_vector,
    joined_stream_text,
    simulated_body,
    simulated_text,
    split_text,
    stream_chunks,
    token_cap,
)
from shared.contracts import InferenceKind

CHAT_BODY = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is a GPU?"}]}


def test_chat_answer_is_openai_shaped_and_names_model_and_device() -> None:
    body = simulated_body(InferenceKind.CHAT, "r1", "llama3-8b-instruct", "cuda:0", CHAT_BODY, 1700000000)
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-r1" and body["created"] == 1700000000
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "[simulated llama3-8b-instruct on cuda:0] You said: What is a GPU?"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body == simulated_body(InferenceKind.CHAT, "r1", "llama3-8b-instruct", "cuda:0", CHAT_BODY, 1700000000)


def test_completion_answer_echoes_the_prompt() -> None:
    body = simulated_body(InferenceKind.COMPLETION, "r2", "llama3-8b", "cpu", {"prompt": "Once upon"}, 1)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "[simulated llama3-8b on cpu] You said: Once upon"


def test_long_messages_are_cut_and_multipart_content_read() -> None:
    multipart = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 100}]}]}
    text = simulated_text("m", "cuda:1", multipart)
    assert text.endswith("x" * 60 + "...")
    assert simulated_text("m", "cpu", {"messages": []}) == "[simulated m on cpu] Hello."


def test_embeddings_one_vector_per_input_deterministic_unit_length() -> None:
    body = simulated_body(InferenceKind.EMBEDDING, "r3", "bge-small-en", "cuda:1", {"input": ["a", "b"]}, 1)
    assert body["object"] == "list" and body["model"] == "bge-small-en"
    assert [d["index"] for d in body["data"]] == [0, 1]
    first = body["data"][0]["embedding"]
    assert len(first) == 8 and math.isclose(math.fsum(x * x for x in first), 1.0, rel_tol=1e-4)
    assert first == embedding_vector("bge-small-en", "a") != embedding_vector("bge-small-en", "b")
    single = simulated_body(InferenceKind.EMBEDDING, "r4", "bge-small-en", "cuda:1", {"input": "a"}, 1)
    assert single["data"][0]["embedding"] == first


@pytest.mark.parametrize("pieces", [1, 2, 7, 8, 50])
def test_split_text_joins_back(pieces: int) -> None:
    text = "[simulated m on cuda:0] You said: one two three four five"
    parts = split_text(text, pieces)
    assert "".join(parts) == text and len(parts) <= max(1, pieces)


@pytest.mark.parametrize("kind", [InferenceKind.CHAT, InferenceKind.COMPLETION])
def test_stream_chunks_carry_the_whole_answer(kind: InferenceKind) -> None:
    chunks = stream_chunks(kind, "r5", "m", "cuda:0", CHAT_BODY, 5)
    assert 2 <= len(chunks) <= 9
    assert joined_stream_text(chunks) == simulated_text("m", "cuda:0", CHAT_BODY)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    expected = "chat.completion.chunk" if kind is InferenceKind.CHAT else "text_completion"
    assert {c["object"] for c in chunks} == {expected}


ANSWER = "[simulated m on cuda:0] You said: What is a GPU?"  # 10 tokens (words)


@pytest.mark.parametrize(
    ("limits", "text", "finish"),
    [
        ({}, ANSWER, "stop"),
        ({"max_tokens": 10}, ANSWER, "stop"),
        ({"max_tokens": 500}, ANSWER, "stop"),
        ({"max_tokens": 4}, "[simulated m on cuda:0]", "length"),
        ({"max_completion_tokens": 1}, "[simulated", "length"),
        ({"max_completion_tokens": 2, "max_tokens": 8}, "[simulated m", "length"),
        ({"max_tokens": 0}, ANSWER, "stop"),  # unusable: the gateway refuses it, the engine ignores it
        ({"max_tokens": "4"}, ANSWER, "stop"),
    ],
)
@pytest.mark.parametrize("kind", [InferenceKind.CHAT, InferenceKind.COMPLETION])
def test_the_token_cap_cuts_the_answer_and_says_length(
    kind: InferenceKind, limits: dict[str, object], text: str, finish: str
) -> None:
    body = simulated_body(kind, "r", "m", "cuda:0", {**CHAT_BODY, **limits}, 1)

    [choice] = body["choices"]
    assert choice.get("text", choice.get("message", {}).get("content")) == text
    assert choice["finish_reason"] == finish
    assert body["usage"]["completion_tokens"] == len(text.split())


@pytest.mark.parametrize(("n", "choices"), [(None, 1), (1, 1), (3, 3), (0, 1), (True, 1)])
@pytest.mark.parametrize("kind", [InferenceKind.CHAT, InferenceKind.COMPLETION])
def test_n_answers_that_many_choices_counting_each_ones_tokens(kind: InferenceKind, n: object, choices: int) -> None:
    body = simulated_body(kind, "r", "m", "cuda:0", {**CHAT_BODY, "n": n, "max_tokens": 4}, 1)

    assert [c["index"] for c in body["choices"]] == list(range(choices))
    assert {c["finish_reason"] for c in body["choices"]} == {"length"}
    usage = body["usage"]
    assert usage["completion_tokens"] == 4 * choices
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize(
    ("body", "n", "cap"),
    [({}, 1, None), ({"n": 2, "max_tokens": 7}, 2, 7), ({"max_completion_tokens": 3, "max_tokens": 9}, 1, 3)],
)
def test_what_the_body_asks_for(body: dict[str, object], n: int, cap: int | None) -> None:
    assert (choice_count(body), token_cap(body)) == (n, cap)


@pytest.mark.parametrize("kind", [InferenceKind.CHAT, InferenceKind.COMPLETION])
@pytest.mark.parametrize("n", [1, 3])
def test_a_stream_carries_each_choice_whole_and_finishes_each(kind: InferenceKind, n: int) -> None:
    body = {**CHAT_BODY, "n": n, "max_tokens": 6}

    chunks = stream_chunks(kind, "r", "m", "cuda:0", body, 5)

    whole = simulated_body(kind, "r", "m", "cuda:0", body, 5)
    for i in range(n):
        assert joined_stream_text(chunks, i) == "[simulated m on cuda:0] You said:"
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["index"] == i]
        assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert all(len(c["choices"]) == 1 and "usage" not in c for c in chunks)
    assert whole["usage"]["completion_tokens"] == 6 * n
    if kind is InferenceKind.CHAT:  # each choice's first delta names the speaker
        firsts = [next(c for c in chunks if c["choices"][0]["index"] == i) for i in range(n)]
        assert all(f["choices"][0]["delta"]["role"] == "assistant" for f in firsts)


@pytest.mark.parametrize("kind", [InferenceKind.CHAT, InferenceKind.COMPLETION])
@pytest.mark.parametrize(("options", "usage"), [({"include_usage": True}, True), ({"include_usage": False}, False)])
def test_include_usage_ends_the_stream_with_a_usage_chunk_without_choices(
    kind: InferenceKind, options: dict[str, object], usage: bool
) -> None:
    body = {**CHAT_BODY, "n": 2, "stream_options": options}

    chunks = stream_chunks(kind, "r", "m", "cuda:0", body, 5)

    if usage:
        *streamed, last = chunks
        assert last["choices"] == [] and last["usage"] == simulated_body(kind, "r", "m", "cuda:0", body, 5)["usage"]
        assert all(c["usage"] is None for c in streamed)  # as OpenAI streams it: null until the last
        assert {c["id"] for c in chunks} == {last["id"]} and last["created"] == 5
    else:
        assert all("usage" not in c for c in chunks) and all(c["choices"] for c in chunks)
