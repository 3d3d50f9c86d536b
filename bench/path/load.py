"""The clients: ``wrk`` (or a small asyncio client when wrk is missing) for throughput, and ``http.client``
over one keep-alive connection for serial latency and the time to a stream's first chunk.

Every path gets the same client, the same request and the same connection counts, so what the client
itself costs cancels out of the differences the report shows.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.path.stats import percentile
from bench.path.upstream import MODEL

PROMPT = "Say hello in eight tokens."
WRK_MARK = "WRK_JSON "
"""The line the Lua script's ``done`` prints, followed by its figures as JSON."""


def request_body(*, stream: bool = False, model: str = MODEL) -> bytes:
    """The one chat request every client sends."""
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Target:
    """Where a path takes OpenAI requests: ``http://host:port`` + ``/v1``, and the headers it needs."""

    host: str
    port: int
    headers: Mapping[str, str] = field(default_factory=dict)
    prefix: str = "/v1"

    @property
    def chat_path(self) -> str:
        return f"{self.prefix}/chat/completions"

    @property
    def chat_url(self) -> str:
        return f"http://{self.host}:{self.port}{self.chat_path}"

    def request_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", **self.headers}


# ---------------------------------------------------------------------------------------------- throughput


@dataclass(frozen=True)
class LoadResult:
    """One closed-loop run: every connection sends its next request when the last one is answered."""

    requests: int
    """Answers received (any status)."""
    status_errors: int
    """Answers with a status of 400 or more."""
    socket_errors: Mapping[str, int]
    """connect, read, write, timeout."""
    duration_s: float
    p50_ms: float
    p99_ms: float
    client: str

    @property
    def ok(self) -> int:
        return self.requests - self.status_errors

    @property
    def rps(self) -> float:
        """Successful answers per second."""
        return self.ok / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def errors(self) -> int:
        return self.status_errors + sum(self.socket_errors.values())


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def wrk_script(body: bytes, headers: Mapping[str, str]) -> str:
    """A wrk Lua script that POSTs ``body`` with ``headers`` and prints its figures as one JSON line."""
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(body.decode())}"]
    lines += [f"wrk.headers[{lua_string(name)}] = {lua_string(value)}" for name, value in headers.items()]
    lines += [
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        f'  io.write(string.format("{WRK_MARK}{{\\"requests\\":%.0f,\\"duration_us\\":%.0f,'
        '\\"status\\":%.0f,\\"connect\\":%.0f,\\"read\\":%.0f,\\"write\\":%.0f,\\"timeout\\":%.0f,'
        '\\"p50_us\\":%.0f,\\"p99_us\\":%.0f}\\n",',
        "    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,",
        "    latency:percentile(50), latency:percentile(99)))",
        "end",
        "",
    ]
    return "\n".join(lines)


def parse_wrk(output: str, client: str = "wrk") -> LoadResult:
    """The figures the script's ``done`` printed; ``ValueError`` when there are none."""
    for line in output.splitlines():
        if line.startswith(WRK_MARK):
            figures = json.loads(line[len(WRK_MARK) :])
            return LoadResult(
                requests=int(figures["requests"]),
                status_errors=int(figures["status"]),
                socket_errors={k: int(figures[k]) for k in ("connect", "read", "write", "timeout")},
                duration_s=figures["duration_us"] / 1e6,
                p50_ms=figures["p50_us"] / 1000,
                p99_ms=figures["p99_us"] / 1000,
                client=client,
            )
    raise ValueError(f"wrk printed no {WRK_MARK.strip()} line:\n{output[-2000:]}")


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def wrk_version(binary: str) -> str:
    found = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    first = (found.stdout or found.stderr).strip().splitlines()
    # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
    return first[0].split(" [")[0].split(" Copyright")[0] if first else "wrk (unknown version)"


def shares(connections: int, parts: int) -> list[int]:
    """``connections`` split as evenly as can be over ``parts`` (the first ones take the remainder)."""
    return [connections // parts + (i < connections % parts) for i in range(parts)]


def combine(results: Sequence[LoadResult]) -> LoadResult:
    """Runs made side by side as one: counts added, the longest duration, the worst percentiles."""
    if len(results) == 1:
        return results[0]
    kinds = {kind for r in results for kind in r.socket_errors}
    return LoadResult(
        requests=sum(r.requests for r in results),
        status_errors=sum(r.status_errors for r in results),
        socket_errors={kind: sum(r.socket_errors.get(kind, 0) for r in results) for kind in sorted(kinds)},
        duration_s=max(r.duration_s for r in results),
        p50_ms=max(r.p50_ms for r in results),
        p99_ms=max(r.p99_ms for r in results),
        client=results[0].client,
    )


def run_wrk(
    binary: str, targets: Sequence[Target], connections: int, duration_s: int, *, timeout_s: int = 10
) -> LoadResult:
    """``wrk`` (one thread) against the targets' chat route: one wrk per target, side by side, with the
    connections split between them."""
    with tempfile.TemporaryDirectory(prefix="bench-path-wrk-") as folder:
        running = []
        for index, (target, count) in enumerate(zip(targets, shares(connections, len(targets)), strict=True)):
            script = Path(folder) / f"post-{index}.lua"
            script.write_text(wrk_script(request_body(), target.request_headers()))
            argv = [
                binary, "-t", "1", "-c", str(count), "-d", f"{duration_s}s", "--timeout", f"{timeout_s}s",
                "-s", str(script), target.chat_url,
            ]  # fmt: skip
            running.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [process.communicate(timeout=duration_s + timeout_s + 30)[0] for process in running]
    return combine([parse_wrk(output) for output in outputs])


def _request_message(target: Target, body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in target.request_headers().items())
    return (
        f"POST {target.chat_path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n{head}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _python_load(targets: Sequence[Target], connections: int, duration_s: float, timeout_s: float) -> LoadResult:
    """The fallback client: ``connections`` keep-alive connections (spread over the targets), each sending
    its next request when the last is answered, for ``duration_s``."""
    body = request_body()
    latencies: list[float] = []
    counts = {"status": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0}
    deadline = time.perf_counter() + duration_s

    async def one_connection(target: Target) -> None:
        message = _request_message(target, body)
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while time.perf_counter() < deadline:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(target.host, target.port)
                except OSError:
                    counts["connect"] += 1
                    await asyncio.sleep(0.01)
                    continue
            assert reader is not None
            started = time.perf_counter()
            try:
                writer.write(message)
                status = await asyncio.wait_for(_read_response(reader), timeout_s)
            except TimeoutError:
                counts["timeout"] += 1
                writer.close()
                writer = None
                continue
            except (OSError, asyncio.IncompleteReadError, ValueError):
                counts["read"] += 1
                writer.close()
                writer = None
                continue
            latencies.append(time.perf_counter() - started)
            if status >= 400:
                counts["status"] += 1
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_connection(targets[i % len(targets)]) for i in range(connections)))
    elapsed = time.perf_counter() - started
    ms = [1000 * x for x in latencies]
    return LoadResult(
        requests=len(latencies),
        status_errors=counts.pop("status"),
        socket_errors=counts,
        duration_s=elapsed,
        p50_ms=percentile(ms, 50),
        p99_ms=percentile(ms, 99),
        client="python asyncio",
    )


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one whole response (Content-Length or chunked); its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


def run_python_load(
    targets: Sequence[Target], connections: int, duration_s: float, *, timeout_s: float = 10
) -> LoadResult:
    return asyncio.run(_python_load(targets, connections, duration_s, timeout_s))


# ---------------------------------------------------------------------------------------------- one at a time


@dataclass(frozen=True)
class Timings:
    """Milliseconds per request, one request at a time over one keep-alive connection."""

    samples_ms: list[float]
    errors: int

    @property
    def p50_ms(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.samples_ms, 99)


class _Connection:
    """``http.client`` over one kept-alive connection, opened again after a failure (which is counted)."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.errors = 0
        self._conn: http.client.HTTPConnection | None = None

    def get(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.target.host, self.target.port, timeout=self.timeout_s)
        return self._conn

    def fail(self) -> None:
        self.errors += 1
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def serial(target: Target, requests: int, warmup: int, *, timeout_s: float = 30) -> Timings:
    """Round trips of non-streamed chat requests, one after another; the first ``warmup`` are not kept."""
    body = request_body()
    headers = target.request_headers()
    connection = _Connection(target, timeout_s)
    samples: list[float] = []
    clock = time.perf_counter
    try:
        for index in range(warmup + requests):
            started = clock()
            try:
                conn = connection.get()
                conn.request("POST", target.chat_path, body, headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.fail()
                continue
            took = clock() - started
            if response.status >= 400:
                connection.errors += 1
            elif index >= warmup:
                samples.append(1000 * took)
            if response.will_close:
                connection.close()
    finally:
        connection.close()
    return Timings(samples, connection.errors)


def first_chunk(target: Target, requests: int, warmup: int, *, timeout_s: float = 30) -> Timings:
    """Time from sending a streamed chat request to the first bytes of its first ``data:`` event."""
    body = request_body(stream=True)
    headers = target.request_headers()
    connection = _Connection(target, timeout_s)
    samples: list[float] = []
    clock = time.perf_counter
    try:
        for index in range(warmup + requests):
            started = clock()
            try:
                conn = connection.get()
                conn.request("POST", target.chat_path, body, headers)
                response = conn.getresponse()
                seen = b""
                took = math.nan
                while True:
                    data = response.read1(65536)
                    if not data:
                        break
                    seen = seen[-8:] + data
                    if b"data:" in seen:
                        took = clock() - started
                        break
                response.read()  # the rest of the stream, so the connection can be used again
            except (OSError, http.client.HTTPException):
                connection.fail()
                continue
            if response.status >= 400 or math.isnan(took):
                connection.errors += 1
            elif index >= warmup:
                samples.append(1000 * took)
            if response.will_close:
                connection.close()
    finally:
        connection.close()
    return Timings(samples, connection.errors)


def get_json(
    host: str,
    port: int,
    path: str,
    headers: Mapping[str, str] | None = None,
    *,
    timeout_s: float = 5,
    method: str = "GET",
    body: object = None,
) -> tuple[int, object]:
    """One request on a fresh connection: the status and the JSON answer (None when not JSON)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        payload = None if body is None else json.dumps(body).encode()
        sent = dict(headers or {})
        if payload is not None:
            sent["Content-Type"] = "application/json"
        conn.request(method, path, payload, sent)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, None
