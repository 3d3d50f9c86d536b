"""Tracing exports over OTLP/HTTP only when an endpoint is configured; logs can be JSON."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from shared.bus.core import reset_correlation_id, set_correlation_id
from shared.telemetry import setup_logging

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from opentelemetry import trace
from shared.telemetry import setup_tracing
setup_tracing("detector", sys.argv[1] or None)
with trace.get_tracer("t").start_as_current_span("scan"):
    pass
getattr(trace.get_tracer_provider(), "shutdown", lambda: None)()
"""


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Collector.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.mark.parametrize("configured", [True, False])
def test_spans_leave_the_process_only_when_an_endpoint_is_set(configured: bool) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Collector.received = []
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}/v1/traces" if configured else ""
        subprocess.run([sys.executable, "-c", SCRIPT, endpoint], cwd=REPO, check=True, timeout=60)
    finally:
        server.shutdown()
    if configured:
        assert [path for path, _ in _Collector.received] == ["/v1/traces"]
        assert b"gpuplane-detector" in _Collector.received[0][1]
    else:
        assert _Collector.received == []


def test_json_logs_carry_the_correlation_id(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    setup_logging("api", "INFO", as_json=True)
    token = set_correlation_id("req-42")
    try:
        logging.getLogger("gpuplane.test").info("rescan from %s", "curl")
    finally:
        reset_correlation_id(token)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["msg"] == "rescan from curl" and line["correlation_id"] == "req-42"
    assert line["level"] == "INFO"
