from __future__ import annotations

import math

import pytest

from services.worker.core.responses import (
    embedding_vector,
    joined_stream_text,
    simulated_body,
    simulated_text,
    split_text,
    stream_chunks,
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
