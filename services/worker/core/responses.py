"""OpenAI-shaped answers the simulated backend gives: deterministic, naming the model and device.

Pure: ``created`` (Unix seconds) comes in from the caller.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.contracts import InferenceKind

ECHO_CHARS = 60
EMBEDDING_DIMENSIONS = 8
STREAM_PIECES = 8


def last_user_text(body: Mapping[str, Any]) -> str:
    """The last user message of a chat body, or a completion's prompt, as plain text."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return _text(message.get("content"))
        return ""
    return _text(body.get("prompt"))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Multi-part content (text and images): the text parts, or the first prompt of a list.
        parts = [p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content]
        return " ".join(part for part in parts if part)
    return "" if content is None else str(content)


def _tokens(text: str) -> int:
    return len(text.split())


def simulated_text(model: str, device: str, body: Mapping[str, Any]) -> str:
    """``[simulated <model> on <device>] You said: <start of the last user message>``."""
    said = " ".join(last_user_text(body).split())
    if len(said) > ECHO_CHARS:
        said = said[:ECHO_CHARS].rstrip() + "..."
    return f"[simulated {model} on {device}] You said: {said}" if said else f"[simulated {model} on {device}] Hello."


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def choice_count(body: Mapping[str, Any]) -> int:
    """``n``: how many choices to answer with (1 when absent or unusable; the gateway bounds it)."""
    return _positive_int(body.get("n")) or 1


def token_cap(body: Mapping[str, Any]) -> int | None:
    """The most completion tokens the body allows: ``max_completion_tokens``, else ``max_tokens``; None: no cap."""
    return _positive_int(body.get("max_completion_tokens")) or _positive_int(body.get("max_tokens"))


def wants_usage(body: Mapping[str, Any]) -> bool:
    """``stream_options.include_usage``: a streamed answer ends with a chunk holding ``usage``."""
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


@dataclass(frozen=True)
class Answer:
    """What every choice of a simulated chat or completion says (they are alike: the answer is deterministic)."""

    text: str
    finish_reason: str
    """"length" when the token cap cut the text, else "stop"."""
    choices: int
    usage: dict[str, int]


def simulated_answer(model: str, device: str, body: Mapping[str, Any]) -> Answer:
    """The answer's text cut to the body's token cap (a token is a word here), and its usage over all choices."""
    text = simulated_text(model, device, body)
    finish = "stop"
    cap = token_cap(body)
    if cap is not None and _tokens(text) > cap:
        text, finish = " ".join(text.split()[:cap]), "length"
    choices = choice_count(body)
    prompt_tokens = _tokens(last_user_text(body))
    completion_tokens = _tokens(text) * choices
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return Answer(text, finish, choices, usage)


def chat_completion(request_id: str, model: str, device: str, body: Mapping[str, Any], created: int) -> dict[str, Any]:
    answer = simulated_answer(model, device, body)
    message = {"role": "assistant", "content": answer.text}
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "message": dict(message), "finish_reason": answer.finish_reason} for i in range(answer.choices)
        ],
        "usage": answer.usage,
    }


def text_completion(request_id: str, model: str, device: str, body: Mapping[str, Any], created: int) -> dict[str, Any]:
    answer = simulated_answer(model, device, body)
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "text": answer.text, "logprobs": None, "finish_reason": answer.finish_reason}
            for i in range(answer.choices)
        ],
        "usage": answer.usage,
    }


def embedding_vector(model: str, text: str) -> list[float]:
    """Eight floats of unit length, a pure function of the model and the text."""
    digest = hashlib.sha256(f"{model}\x00{text}".encode()).digest()
    raw = [int.from_bytes(digest[i * 4 : i * 4 + 4], "big") / 2**31 - 1.0 for i in range(EMBEDDING_DIMENSIONS)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def input_items(body: Mapping[str, Any]) -> list[Any]:
    """The separate inputs of an embedding body: ``input`` is a string, a list of strings, a list of
    token ids (one input) or a list of token-id lists."""
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    return [value]


def embedding_inputs(body: Mapping[str, Any]) -> list[str]:
    """Each input of an embedding body as text (token ids joined), what a vector is made from."""
    texts: list[str] = []
    for item in input_items(body):
        if isinstance(item, list):
            texts.append(" ".join(str(token) for token in item))
        else:
            texts.append(_text(item))
    return texts


def embeddings(model: str, body: Mapping[str, Any]) -> dict[str, Any]:
    inputs = embedding_inputs(body)
    tokens = sum(_tokens(text) for text in inputs)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": embedding_vector(model, text)}
            for i, text in enumerate(inputs)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def simulated_body(
    kind: InferenceKind, request_id: str, model: str, device: str, body: Mapping[str, Any], created: int
) -> dict[str, Any]:
    """The whole answer to one request."""
    if kind is InferenceKind.CHAT:
        return chat_completion(request_id, model, device, body, created)
    if kind is InferenceKind.COMPLETION:
        return text_completion(request_id, model, device, body, created)
    return embeddings(model, body)


def split_text(text: str, pieces: int) -> list[str]:
    """``text`` cut into at most ``pieces`` consecutive parts that join back to it, at word starts."""
    words = text.split(" ")
    if pieces <= 1 or len(words) <= 1:
        return [text]
    per = math.ceil(len(words) / pieces)
    parts = [" ".join(words[i : i + per]) for i in range(0, len(words), per)]
    return [part if i == 0 else " " + part for i, part in enumerate(parts)]


def stream_chunks(
    kind: InferenceKind,
    request_id: str,
    model: str,
    device: str,
    body: Mapping[str, Any],
    created: int,
    pieces: int = STREAM_PIECES,
) -> list[dict[str, Any]]:
    """A streamed answer as OpenAI chunk objects: about ``pieces`` per choice, the choices interleaved, each
    choice's last chunk with its finish_reason. With ``stream_options.include_usage`` every chunk has ``usage``
    null and one more chunk, with no choices, carries the usage (as OpenAI streams it)."""
    answer = simulated_answer(model, device, body)
    parts = split_text(answer.text, max(1, pieces - 1))
    chat = kind is InferenceKind.CHAT
    usage = wants_usage(body)

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": f"chatcmpl-{request_id}" if chat else f"cmpl-{request_id}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if usage:
            out["usage"] = None
        return out

    def choice(index: int, piece: str | None, finish: str | None) -> dict[str, Any]:
        if not chat:
            return {"index": index, "text": piece or "", "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {} if piece is None else {"content": piece}
        return {"index": index, "delta": delta, "finish_reason": finish}

    indexes = range(answer.choices)
    chunks = [chunk([choice(i, part, None)]) for part in parts for i in indexes]
    if chat:  # each choice's first delta says who speaks
        for first in chunks[: answer.choices]:
            first["choices"][0]["delta"] = {"role": "assistant", **first["choices"][0]["delta"]}
    chunks.extend(chunk([choice(i, None, answer.finish_reason)]) for i in indexes)
    if usage:
        chunks.append({**chunk([]), "usage": answer.usage})
    return chunks


def joined_stream_text(chunks: Sequence[Mapping[str, Any]], index: int = 0) -> str:
    """The text a client assembles for choice ``index`` from streamed chunks (tests, and anyone replaying a
    stream)."""
    out: list[str] = []
    for chunk in chunks:
        for choice in chunk.get("choices", ()):
            if choice.get("index", 0) != index:
                continue
            delta = choice.get("delta")
            if delta is not None:
                out.append(delta.get("content") or "")
            else:
                out.append(choice.get("text") or "")
    return "".join(out)
