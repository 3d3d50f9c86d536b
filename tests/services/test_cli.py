"""The gpuplane command as a user meets it: clear errors, local scans, refusing a busy port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import main
from services.stack.embedded import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "argv,env,expected",
    [
        (["detector", "--backend", "cuda"], {}, "unknown GPU backend 'cuda'; valid: auto, nvml, nvidia-smi"),
        (["up"], {"GPUPLANE_HTTP_PORT": "eighty"}, "invalid setting http_port (GPUPLANE_HTTP_PORT)"),
        (["up"], {"GPUPLANE_DETECTOR_BACKEND": "rocm"}, "GPUPLANE_DETECTOR_BACKEND"),
        (["api", "--http-port", "70000"], {}, "http_port"),
    ],
)
def test_bad_settings_exit_2_naming_the_setting(
    argv: list[str], env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


def test_gpus_local_prints_the_simulated_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpus", "--local", "--fleet", str(REPO / "deploy/fleets/dual-3090-nvlink.yaml")]) == 0
    out = capsys.readouterr().out
    assert "source simulated" in out and "SIMULATED" in out
    assert out.count("NVIDIA GeForce RTX 3090") == 2
    assert "1 " in out and "0 " in out


def test_gpus_local_on_a_machine_without_gpu_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpus", "--local", "--backend", "auto"]) == 0
    out = capsys.readouterr().out
    # This suite runs where there is no GPU; where there is one, the table lists it instead.
    assert "No GPUs detected" in out or "source nvml" in out or "source nvidia-smi" in out


def test_gpus_against_no_nats_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["gpus", "--nats-url", f"nats://127.0.0.1:{free_port()}", "--timeout-s", "1"])
    assert code == 2
    assert "no NATS server answered" in capsys.readouterr().err


@pytest.mark.integration
def test_up_refuses_a_port_in_use_and_says_which_setting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "GPUPLANE_NATS_PORT": str(port),
            "GPUPLANE_DATA_DIR": str(tmp_path / "data"),
            "GPUPLANE_FLEET": str(REPO / "deploy/fleets/reference.yaml"),
        }
        result = subprocess.run(
            [sys.executable, "-m", "services.cli", "up"], env=env, cwd=REPO, capture_output=True, text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port} for NATS is already in use" in result.stderr
    assert "GPUPLANE_NATS_PORT" in result.stderr
    assert "no process left behind" in result.stdout


@pytest.mark.parametrize(
    "env,fleet_text,expected",
    [
        ({"GPUPLANE_DETECTOR_BACKEND": "simulated"}, None, "needs a fleet file: set GPUPLANE_FLEET"),
        ({}, "gpus:\n  - index: 0\n    name: X\n    vram_total_mb: lots\n", "vram_total_mb"),
        ({"GPUPLANE_FLEET": "/nonexistent/fleet.yaml"}, None, "does not exist"),
        ({}, "hosts:\n  - name: 'evil*host'\n    gpus: []\n", "hosts.0.name"),
    ],
)
def test_up_refuses_bad_fleet_settings_before_starting_anything(
    env: dict[str, str], fleet_text: str | None, expected: str, tmp_path: Path
) -> None:
    full_env = {**os.environ, "GPUPLANE_DATA_DIR": str(tmp_path / "data"),
                "GPUPLANE_HTTP_PORT": str(free_port()), "GPUPLANE_NATS_PORT": str(free_port()), **env}
    if fleet_text is not None:
        (tmp_path / "fleet.yaml").write_text(fleet_text)
        full_env["GPUPLANE_FLEET"] = str(tmp_path / "fleet.yaml")
    result = subprocess.run([sys.executable, "-m", "services.cli", "up"], env=full_env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "starting nats-server" not in result.stderr


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"GPUPLANE_HOST_NAME": "bad host"}, "invalid setting host_name (GPUPLANE_HOST_NAME)"),
        ({"GPUPLANE_AUTH": "off", "GPUPLANE_HTTP_HOST": "0.0.0.0"}, "only while every listener is on loopback"),
    ],
)
def test_up_refuses_bad_settings_with_code_2(env: dict[str, str], expected: str, tmp_path: Path) -> None:
    full_env = {**os.environ, "GPUPLANE_DATA_DIR": str(tmp_path / "data"), **env}
    result = subprocess.run([sys.executable, "-m", "services.cli", "up"], env=full_env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert expected in result.stderr


def test_up_stops_at_a_service_name_against_the_rule_naming_the_file_and_the_field(tmp_path: Path) -> None:
    catalog = tmp_path / "services.yml"
    catalog.write_text("services:\n  ai-llm: {model: m, vram_gb: 4}\n  ai*star: {model: m, vram_gb: 1}\n")
    env = {**os.environ, "GPUPLANE_DATA_DIR": str(tmp_path / "data"), "GPUPLANE_CATALOG_FILE": str(catalog),
           "GPUPLANE_HTTP_PORT": str(free_port()), "GPUPLANE_NATS_PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-m", "services.cli", "up"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{catalog}: services.'ai*star': the service name is not valid" in result.stderr
    assert "starting nats-server" not in result.stderr


def test_compose_env_makes_fresh_secrets_and_never_overwrites(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    assert main(["compose-env", "--output", str(env_file)]) == 0
    first = env_file.read_text()
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    values = dict(line.split("=", 1) for line in first.splitlines() if line and not line.startswith("#"))
    secrets = {k: v for k, v in values.items() if k != "GPUPLANE_ALLOWED_HOSTS"}
    assert len(set(secrets.values())) == len(secrets) and all(len(v) >= 40 for v in secrets.values())
    assert {f"GPUPLANE_NATS_{i}_PASSWORD" for i in ("DETECTOR", "API", "ADMIN", "OBSERVER")} <= set(values)
    assert main(["compose-env", "--output", str(env_file)]) == 2
    assert env_file.read_text() == first


@pytest.mark.integration
def test_up_checks_the_api_port_before_starting_nats(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "GPUPLANE_HTTP_PORT": str(port), "GPUPLANE_NATS_PORT": str(free_port()),
               "GPUPLANE_DATA_DIR": str(tmp_path / "data"),
               "GPUPLANE_FLEET": str(REPO / "deploy/fleets/reference.yaml")}
        result = subprocess.run([sys.executable, "-m", "services.cli", "up"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {port} for the API is already in use" in result.stderr
    assert "starting nats-server" not in result.stderr
