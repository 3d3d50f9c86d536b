"""CDI spec reading: devices of nvidia.com/gpu, folder priority, conflicts, and specs that are broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.orchestrator.cdi import CdiSpecError, load_spec, scan
from shared.errors import ConfigError

NVIDIA = """\
cdiVersion: "0.5.0"
kind: nvidia.com/gpu
containerEdits:
  env: ["NVIDIA_CTK=1"]
devices:
- name: "0"
  containerEdits: {env: ["NVIDIA_VISIBLE_DEVICES=0"]}
- name: GPU-00000000-0000-4000-8000-000000000000
  containerEdits: {env: ["NVIDIA_VISIBLE_DEVICES=0"], deviceNodes: [{path: /dev/nvidia0}]}
- name: all
  containerEdits: {env: ["NVIDIA_VISIBLE_DEVICES=void"]}
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def spec_of(*names: str, kind: str = "nvidia.com/gpu", env: str = "X=1") -> str:
    devices = [{"name": n, "containerEdits": {"env": [env]}} for n in names]
    return json.dumps({"cdiVersion": "0.6.0", "kind": kind, "devices": devices})


def test_yaml_spec(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "nvidia.yaml", NVIDIA))
    assert spec.kind == "nvidia.com/gpu"
    assert list(spec.devices) == ["0", "GPU-00000000-0000-4000-8000-000000000000", "all"]
    assert spec.devices["0"] == {"NVIDIA_CTK": "1", "NVIDIA_VISIBLE_DEVICES": "0"}


def test_scan_devices_and_env(tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    write(etc, "nvidia.yaml", NVIDIA)
    write(etc, "other.json", spec_of("0", kind="vendor.com/fpga"))
    write(run, "extra.json", spec_of("7", env="NVIDIA_VISIBLE_DEVICES=7"))
    write(etc, "notes.yml", "ignored: podman reads only .yaml and .json")
    found = scan([etc, run, tmp_path / "missing"])
    assert found.names == ("0", "GPU-00000000-0000-4000-8000-000000000000", "all", "7")
    assert found.devices["7"].env == {"NVIDIA_VISIBLE_DEVICES": "7"}
    assert found.devices["7"].spec == run / "extra.json"
    assert found.spec_files == (etc / "nvidia.yaml", run / "extra.json")
    assert found.errors == () and found.conflicts == {}
    assert found.problems(["0", "7", "all"]) == []
    assert found.problems([]) == []


def test_later_folder_wins(tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    write(etc, "a.json", spec_of("0", env="FROM=etc"))
    write(run, "b.json", spec_of("0", env="FROM=run"))
    found = scan([etc, run])
    assert found.devices["0"].env == {"FROM": "run"} and found.conflicts == {}


def test_same_folder_conflict_is_unresolvable(tmp_path: Path) -> None:
    # podman: "unresolvable CDI devices nvidia.com/gpu=1" when two specs in one folder define it.
    etc, run = tmp_path / "etc", tmp_path / "run"
    write(etc, "a.json", spec_of("0", "1"))
    write(etc, "b.json", spec_of("1", "2"))
    write(run, "c.json", spec_of("1"))
    found = scan([etc, run])
    assert found.names == ("0", "2")
    assert found.conflicts == {"1": (etc / "a.json", etc / "b.json")}
    [problem] = found.problems(["0", "1"])
    assert "nvidia.com/gpu=1 is defined in several specs of one folder" in problem
    assert str(etc / "a.json") in problem and str(etc / "b.json") in problem


def test_missing_device_names_the_defined_ones(tmp_path: Path) -> None:
    write(tmp_path, "nvidia.yaml", NVIDIA)
    problems = scan([tmp_path]).problems(["0", "GPU-ffff"])
    assert problems == [
        "the CDI spec defines no device GPU-ffff (it defines: 0, GPU-00000000-0000-4000-8000-000000000000, all); "
        "regenerate it with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` or check GPUPLANE_DEVICE_IDS"
    ]


def test_no_spec_at_all(tmp_path: Path) -> None:
    write(tmp_path / "run", "fpga.json", spec_of("0", kind="vendor.com/fpga"))
    problems = scan([tmp_path / "etc", tmp_path / "run"]).problems(["0"])
    assert problems == [
        f"no CDI spec for nvidia.com/gpu in {tmp_path / 'etc'} or {tmp_path / 'run'}: "
        "generate one with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"
    ]


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("bad.yaml", "cdiVersion: [oops", "is not valid YAML"),
        ("bad.json", "{not json", "is not valid JSON"),
        ("list.yaml", "- a\n- b\n", "is not a mapping"),
        ("noversion.yaml", "kind: nvidia.com/gpu\ndevices: [{name: a}]\n", "has no cdiVersion"),
        ("kind.yaml", "cdiVersion: '0.5.0'\nkind: gpu\ndevices: [{name: a}]\n", "invalid kind 'gpu'"),
        ("nodevices.yaml", "cdiVersion: '0.5.0'\nkind: nvidia.com/gpu\n", "has no devices list"),
        ("number.yaml", "cdiVersion: '0.5.0'\nkind: nvidia.com/gpu\ndevices: [{name: 0}]\n", 'quote it: name: "0"'),
        ("badname.yaml", "cdiVersion: '0.5.0'\nkind: nvidia.com/gpu\ndevices: [{name: '-x'}]\n", "invalid name '-x'"),
        ("twice.json", spec_of("0", "0"), "defines device 0 twice"),
        (
            "env.yaml",
            "cdiVersion: '0.5.0'\nkind: nvidia.com/gpu\ndevices: [{name: a, containerEdits: {env: [NOVALUE]}}]\n",
            "not NAME=VALUE",
        ),
        ("latin1.yaml", b"\xff\xfe".decode("latin-1"), "cannot be read"),
    ],
)
def test_broken_specs(tmp_path: Path, name: str, text: str, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CdiSpecError, match=reason) as caught:
        load_spec(path)
    assert caught.value.path == path and str(path) in str(caught.value)
    assert isinstance(caught.value, ConfigError)


def test_broken_spec_is_reported_not_raised(tmp_path: Path) -> None:
    write(tmp_path, "a-broken.yaml", "cdiVersion: [oops")
    write(tmp_path, "nvidia.yaml", NVIDIA)
    found = scan([tmp_path])
    assert found.names == ("0", "GPU-00000000-0000-4000-8000-000000000000", "all")
    assert [e.path for e in found.errors] == [tmp_path / "a-broken.yaml"]
    # podman skips a broken spec too: it blocks nothing while the devices asked for resolve...
    assert found.problems(["0"]) == []
    # ...and is named where a device is missing, since it may be the spec that should define it.
    problems = found.problems(["GPU-ffff"])
    assert problems[0].startswith(f"CDI spec {tmp_path / 'a-broken.yaml'}: is not valid YAML")
    assert "defines no device GPU-ffff" in problems[1]


def test_unlistable_folder(tmp_path: Path) -> None:
    not_a_folder = write(tmp_path, "file.yaml", NVIDIA)
    found = scan([not_a_folder])
    assert [e.path for e in found.errors] == [not_a_folder]
    assert "cannot be listed" in str(found.errors[0])
