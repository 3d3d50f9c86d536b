from __future__ import annotations

import ast
import logging
import re
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import gpuplane_runtime
from gpuplane_runtime import gpu
from gpuplane_runtime.gpu import (
    ChainProbe,
    GpuEnvError,
    GpuProbe,
    NoGpuAvailable,
    NvidiaSmiProbe,
    NvmlProbe,
    TorchProbe,
    assigned_gpus,
    cuda_ordinals,
    get_target_gpu,
    parse_nvidia_smi_list,
    tensor_parallel_size,
    vram_budget_gb,
)

GPU_PY = Path(gpu.__file__)
AA, BB, CC = "GPU-aaaa-1111", "GPU-bbbb-2222", "GPU-cccc-3333"


@dataclass
class FakeProbe:
    """CUDA as seen by the process: one UUID (or None when unknown) per ordinal."""

    uuids: list[str | None]
    broken: dict[int, str] = field(default_factory=dict)
    raises: dict[int, Exception] = field(default_factory=dict)
    name: str = "fake"
    checked: list[int] = field(default_factory=list)

    def count(self) -> int:
        return len(self.uuids)

    def check(self, ordinal: int) -> str | None:
        self.checked.append(ordinal)
        if ordinal in self.raises:
            raise self.raises[ordinal]
        return self.broken.get(ordinal)

    def uuid(self, ordinal: int) -> str | None:
        return self.uuids[ordinal]


def unknown(n: int) -> list[str | None]:
    return [None] * n


# (env, probe uuids, broken ordinals) -> (index, assigned, fallback)
CASES: dict[str, tuple[dict[str, str], list[str | None], dict[int, str], tuple[int, str | None, bool]]] = {
    "uuid assigned, seen by uuid": ({"GPUPLANE_ASSIGNED_GPUS": AA}, [AA], {}, (0, AA, False)),
    "uuid assigned, probe knows no uuid": ({"GPUPLANE_ASSIGNED_GPUS": AA}, unknown(1), {}, (0, AA, False)),
    "index assigned": ({"GPUPLANE_ASSIGNED_GPUS": "2"}, unknown(1), {}, (0, "2", False)),
    "from NVIDIA_VISIBLE_DEVICES only": ({"NVIDIA_VISIBLE_DEVICES": AA}, [AA], {}, (0, AA, False)),
    "ours wins over NVIDIA_VISIBLE_DEVICES": (
        {"GPUPLANE_ASSIGNED_GPUS": BB, "NVIDIA_VISIBLE_DEVICES": AA},
        [BB],
        {},
        (0, BB, False),
    ),
    "multi uuid: first in PCI order": ({"GPUPLANE_ASSIGNED_GPUS": f"{BB},{AA}"}, [AA, BB], {}, (0, AA, False)),
    "multi index: ascending is PCI order": ({"GPUPLANE_ASSIGNED_GPUS": "3,1"}, unknown(2), {}, (0, "1", False)),
    "multi: first broken, next assigned": (
        {"GPUPLANE_ASSIGNED_GPUS": f"{AA},{BB}"},
        [AA, BB],
        {0: "ECC error"},
        (1, BB, True),
    ),
    "assigned broken, falls back to another": (
        {"GPUPLANE_ASSIGNED_GPUS": BB},
        [AA, BB, CC],
        {1: "lost"},
        (0, None, True),
    ),
    "not isolated, assigned found by uuid": ({"GPUPLANE_ASSIGNED_GPUS": CC}, [AA, BB, CC], {}, (2, CC, False)),
    "not isolated, index in PCI order": (
        {"GPUPLANE_ASSIGNED_GPUS": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        unknown(3),
        {},
        (1, "1", False),
    ),
    "not isolated, order unknown": ({"GPUPLANE_ASSIGNED_GPUS": "1"}, unknown(3), {}, (0, None, True)),
    "assigned not visible": ({"GPUPLANE_ASSIGNED_GPUS": "GPU-zzzz"}, [AA], {}, (0, None, True)),
    "user CUDA_VISIBLE_DEVICES index": (
        {"GPUPLANE_ASSIGNED_GPUS": f"{AA},{BB}", "CUDA_VISIBLE_DEVICES": "1"},
        unknown(1),
        {},
        (0, BB, False),
    ),
    "user CUDA_VISIBLE_DEVICES uuid prefix": (
        {"GPUPLANE_ASSIGNED_GPUS": f"{AA},{BB}", "CUDA_VISIBLE_DEVICES": "GPU-bbbb"},
        unknown(1),
        {},
        (0, BB, False),
    ),
    "user CUDA_VISIBLE_DEVICES reorders, probe knows uuids": (
        {"GPUPLANE_ASSIGNED_GPUS": AA, "CUDA_VISIBLE_DEVICES": "1,0"},
        [BB, AA],
        {},
        (1, AA, False),
    ),
    "no assignment": ({}, [AA, BB], {}, (0, None, False)),
    "no assignment, first broken": ({}, [AA, BB], {0: "busy"}, (1, None, False)),
    "CDI: NVIDIA_VISIBLE_DEVICES=void with ours": (
        {"NVIDIA_VISIBLE_DEVICES": "void", "GPUPLANE_ASSIGNED_GPUS": AA},
        [AA],
        {},
        (0, AA, False),
    ),
    "NVIDIA_VISIBLE_DEVICES=void alone": ({"NVIDIA_VISIBLE_DEVICES": "void"}, [AA], {}, (0, None, False)),
    "NVIDIA_VISIBLE_DEVICES=all": ({"NVIDIA_VISIBLE_DEVICES": "all"}, [AA], {}, (0, None, False)),
}


@pytest.mark.parametrize("env,uuids,broken,expected", CASES.values(), ids=CASES.keys())
def test_target(
    env: dict[str, str], uuids: list[str | None], broken: dict[int, str], expected: tuple[int, str | None, bool]
) -> None:
    target = get_target_gpu(probe=FakeProbe(uuids, broken), environ=env)
    assert (target.index, target.assigned, target.fallback) == expected
    assert target.device == f"cuda:{expected[0]}"
    assert target.probe == "fake"
    assert target.reason


def test_assigned_usable_is_checked_first_and_alone() -> None:
    probe = FakeProbe([AA, BB, CC])
    target = get_target_gpu(probe=probe, environ={"GPUPLANE_ASSIGNED_GPUS": BB})
    assert probe.checked == [1]
    assert target.assignment == (BB,)
    assert "assigned GPU" in target.reason


def test_fallback_logs_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gpuplane.runtime")
    probe = FakeProbe([AA, BB], broken={0: "CUDA error: uncorrectable ECC error"})
    target = get_target_gpu(probe=probe, environ={"GPUPLANE_ASSIGNED_GPUS": AA})
    assert (target.index, target.fallback) == (1, True)
    assert "uncorrectable ECC error" in target.reason
    records = [r for r in caplog.records if r.name == "gpuplane.runtime"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    assert all(r.args for r in records), "warnings use %-style arguments"
    assert "Assigned GPU cuda:0" in records[0].getMessage()
    assert "uncorrectable ECC error" in records[0].getMessage()
    assert "Falling back to GPU cuda:1" in records[1].getMessage()


def test_no_warning_when_assigned_is_usable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gpuplane.runtime")
    get_target_gpu(probe=FakeProbe([AA]), environ={"GPUPLANE_ASSIGNED_GPUS": AA})
    assert not caplog.records


def test_check_that_raises_counts_as_unusable() -> None:
    probe = FakeProbe([AA, BB], raises={0: RuntimeError("CUDA error: device busy\nmore")})
    target = get_target_gpu(probe=probe, environ={"GPUPLANE_ASSIGNED_GPUS": AA})
    assert (target.index, target.fallback) == (1, True)
    assert "RuntimeError: CUDA error: device busy" in target.reason


def test_none_usable_raises_clear_error() -> None:
    probe = FakeProbe([AA, BB], broken={0: "lost", 1: "out of memory"})
    with pytest.raises(NoGpuAvailable) as info:
        get_target_gpu(probe=probe, environ={"GPUPLANE_ASSIGNED_GPUS": AA})
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert f"Assigned: {AA} (from GPUPLANE_ASSIGNED_GPUS)" in message
    assert f"cuda:0 ({AA}): lost" in message
    assert f"cuda:1 ({BB}): out of memory" in message
    assert "(fake)" in message
    assert info.value.assignment == (AA,)
    assert [what for what, _ in info.value.tried] == [f"cuda:0 ({AA})", f"cuda:1 ({BB})"]


@pytest.mark.parametrize(
    "env,expect",
    [
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, ["Assigned: nothing", "NVIDIA_VISIBLE_DEVICES='void'", "sees no GPU"]),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, ["NVIDIA_VISIBLE_DEVICES='none'"]),
        ({"CUDA_VISIBLE_DEVICES": ""}, ["CUDA_VISIBLE_DEVICES='' (hides every GPU from CUDA)"]),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, ["hides every GPU"]),
        ({"GPUPLANE_ASSIGNED_GPUS": "0,1"}, ["Assigned: 0,1 (from GPUPLANE_ASSIGNED_GPUS)"]),
    ],
)
def test_no_gpu_seen(env: dict[str, str], expect: list[str]) -> None:
    with pytest.raises(NoGpuAvailable) as info:
        get_target_gpu(probe=FakeProbe([]), environ=env)
    for text in expect:
        assert text in str(info.value)


def test_probe_count_failure_is_reported() -> None:
    class Broken(FakeProbe):
        def count(self) -> int:
            raise RuntimeError("torch.cuda.is_available() is False")

    with pytest.raises(NoGpuAvailable, match=r"fake: RuntimeError: torch.cuda.is_available\(\) is False") as info:
        get_target_gpu(probe=Broken([]), environ={"NVIDIA_VISIBLE_DEVICES": "none"})
    assert isinstance(info.value.__cause__, RuntimeError)


# --- environment parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, ()),
        ({"GPUPLANE_ASSIGNED_GPUS": f" {AA} , {BB} ,"}, (AA, BB)),
        ({"GPUPLANE_ASSIGNED_GPUS": "", "NVIDIA_VISIBLE_DEVICES": "1,3"}, ("1", "3")),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, ()),
        ({"NVIDIA_VISIBLE_DEVICES": "VOID"}, ()),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, ()),
        ({"NVIDIA_VISIBLE_DEVICES": ""}, ()),
    ],
)
def test_assigned_gpus(env: dict[str, str], expected: tuple[str, ...]) -> None:
    assert assigned_gpus(env) == expected


@pytest.mark.parametrize(
    "raw,expected", [(None, None), ("", None), ("  ", None), ("6.5", 6.5), (" 4 ", 4.0), ("0.25", 0.25)]
)
def test_vram_budget(raw: str | None, expected: float | None) -> None:
    assert vram_budget_gb({} if raw is None else {"VRAM_BUDGET_GB": raw}) == expected


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "inf", "6GB"])
def test_vram_budget_bad(raw: str) -> None:
    with pytest.raises(GpuEnvError, match=r"VRAM_BUDGET_GB must be a positive number of GB.*" + re.escape(repr(raw))):
        vram_budget_gb({"VRAM_BUDGET_GB": raw})


@pytest.mark.parametrize("raw,expected", [(None, 1), ("", 1), ("1", 1), ("2", 2), (" 4 ", 4)])
def test_tensor_parallel(raw: str | None, expected: int) -> None:
    assert tensor_parallel_size({} if raw is None else {"VLLM_TENSOR_PARALLEL_SIZE": raw}) == expected


@pytest.mark.parametrize("raw", ["0", "-1", "2.0", "two", "+2"])
def test_tensor_parallel_bad(raw: str) -> None:
    with pytest.raises(
        GpuEnvError, match=r"VLLM_TENSOR_PARALLEL_SIZE must be a whole number >= 1.*" + re.escape(repr(raw))
    ):
        tensor_parallel_size({"VLLM_TENSOR_PARALLEL_SIZE": raw})


def test_gpu_env_error_is_value_error() -> None:
    assert issubclass(GpuEnvError, ValueError)


# --- CUDA_VISIBLE_DEVICES mapping and the built-in probes ---------------------------------------------


@pytest.mark.parametrize(
    "cvd,expected",
    [
        (None, [0, 1, 2]),
        ("", []),
        ("-1", []),
        ("2,0", [2, 0]),
        ("1,7,0", [1]),
        ("0,0", [0]),
        ("GPU-cccc", [2]),
        ("gpu-BBBB-2222,0", [1, 0]),
        ("GPU-", []),
        ("MIG-xyz", []),
    ],
)
def test_cuda_ordinals(cvd: str | None, expected: list[int]) -> None:
    assert cuda_ordinals([AA, BB, CC], cvd) == expected


SMI_L = textwrap.dedent(f"""\
    GPU 0: NVIDIA H100 80GB HBM3 (UUID: {AA})
      MIG 1g.10gb     Device  0: (UUID: MIG-0000-1111)
    GPU 1: NVIDIA H100 80GB HBM3 (UUID: {BB})
    Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error
    GPU 3: NVIDIA L4 (UUID: {CC})
    """)


def test_parse_nvidia_smi_list() -> None:
    assert parse_nvidia_smi_list(SMI_L) == [AA, BB, None, CC]
    assert parse_nvidia_smi_list("No devices were found\n") == []


def fake_nvidia_smi(tmp_path: Path, output: str, rc: int = 0) -> dict[str, str]:
    exe = tmp_path / "nvidia-smi"
    (tmp_path / "out.txt").write_text(output)
    exe.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] || exit 9\ncat "{tmp_path / "out.txt"}"\nexit {rc}\n')
    exe.chmod(0o755)
    return {"PATH": str(tmp_path)}


def test_nvidia_smi_probe(tmp_path: Path) -> None:
    env = fake_nvidia_smi(tmp_path, SMI_L) | {"CUDA_VISIBLE_DEVICES": "GPU-cccc,1", "GPUPLANE_ASSIGNED_GPUS": BB}
    probe = NvidiaSmiProbe(env)
    assert probe.count() == 2
    assert [probe.uuid(0), probe.uuid(1)] == [CC, BB]
    assert probe.check(0) is None
    target = get_target_gpu(probe=probe, environ=env)
    assert (target.index, target.assigned, target.fallback, target.probe) == (1, BB, False, "nvidia-smi")


def test_nvidia_smi_probe_failures(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nvidia-smi is not on PATH"):
        NvidiaSmiProbe({"PATH": str(tmp_path)})
    env = fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate with the driver\n", rc=9)
    with pytest.raises(RuntimeError, match="nvidia-smi -L exited 9: NVIDIA-SMI has failed"):
        NvidiaSmiProbe(env).count()


class FakeNvmlError(Exception):
    pass


def fake_pynvml(uuids: list[str | bytes | None], free: list[int]) -> types.ModuleType:
    module = types.ModuleType("pynvml")

    def uuid_of(handle: int) -> str | bytes:
        value = uuids[handle]
        if value is None:
            raise FakeNvmlError("GPU is lost")
        return value

    def memory(handle: int) -> types.SimpleNamespace:
        if uuids[handle] is None:
            raise FakeNvmlError("GPU is lost")
        return types.SimpleNamespace(free=free[handle], total=80)

    module.__dict__.update(
        NVMLError=FakeNvmlError,
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: len(uuids),
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetUUID=uuid_of,
        nvmlDeviceGetMemoryInfo=memory,
    )
    return module


def test_nvml_probe(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([AA.encode(), None, CC], [10, 10, 0]))
    probe = NvmlProbe({"CUDA_VISIBLE_DEVICES": "1,0,2"})
    assert probe.count() == 3
    assert [probe.uuid(i) for i in range(3)] == [None, AA, CC]
    assert probe.check(1) is None
    assert probe.check(2) == "no free memory"
    with pytest.raises(FakeNvmlError):
        probe.check(0)
    caplog.set_level(logging.WARNING, logger="gpuplane.runtime")
    target = get_target_gpu(probe=probe, environ={"GPUPLANE_ASSIGNED_GPUS": f"{CC},{AA}"})
    assert (target.index, target.assigned, target.fallback) == (1, AA, False)
    target = get_target_gpu(probe=probe, environ={"GPUPLANE_ASSIGNED_GPUS": CC})
    assert (target.index, target.assigned, target.fallback) == (1, None, True)
    assert "no free memory" in target.reason


def fake_torch(*, cuda: str | None, devices: list[tuple[str | None, int]]) -> types.ModuleType:
    module = types.ModuleType("torch")
    module.__dict__["__version__"] = "2.4.0+test"
    module.__dict__["version"] = types.SimpleNamespace(cuda=cuda)

    def mem_get_info(ordinal: int) -> tuple[int, int]:
        free = devices[ordinal][1]
        if free < 0:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return free, 100

    module.__dict__["cuda"] = types.SimpleNamespace(
        is_available=lambda: cuda is not None and bool(devices),
        device_count=lambda: len(devices),
        mem_get_info=mem_get_info,
        get_device_properties=lambda ordinal: types.SimpleNamespace(uuid=devices[ordinal][0]),
    )
    return module


def test_torch_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda="12.4", devices=[("aaaa-1111", -1), ("bbbb-2222", 5)]))
    probe = TorchProbe()
    assert probe.count() == 2
    assert probe.uuid(0) == AA
    with pytest.raises(RuntimeError, match="illegal memory access"):
        probe.check(0)
    assert probe.check(1) is None
    target = get_target_gpu(probe=probe, environ={"GPUPLANE_ASSIGNED_GPUS": AA})
    assert (target.index, target.assigned, target.fallback, target.probe) == (1, None, True, "torch")


@pytest.mark.parametrize(
    "cuda,devices,message",
    [
        (None, [], re.escape("torch 2.4.0+test is built without CUDA")),
        ("12.4", [], r"torch.cuda.is_available\(\) is False"),
    ],
)
def test_torch_probe_unavailable(
    monkeypatch: pytest.MonkeyPatch, cuda: str | None, devices: list[tuple[str | None, int]], message: str
) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=cuda, devices=devices))
    with pytest.raises(RuntimeError, match=message):
        TorchProbe().count()


def test_chain_probe_uses_first_that_sees_a_gpu(caplog: pytest.LogCaptureFixture) -> None:
    def no_torch() -> GpuProbe:
        raise ImportError("No module named 'torch'")

    caplog.set_level(logging.WARNING, logger="gpuplane.runtime")
    factories: list[tuple[str, Callable[[], GpuProbe]]] = [
        ("torch", no_torch),
        ("empty", lambda: FakeProbe([], name="empty")),
        ("fake", lambda: FakeProbe([AA])),
    ]
    chain = ChainProbe(factories)
    target = get_target_gpu(probe=chain, environ={"GPUPLANE_ASSIGNED_GPUS": AA})
    assert (target.index, target.assigned, target.probe) == (0, AA, "fake")
    assert chain.tried == [("torch", "ImportError: No module named 'torch'"), ("empty", "sees no GPU")]
    assert "torch: ImportError" in caplog.text


def test_chain_probe_all_fail() -> None:
    def fails() -> GpuProbe:
        raise OSError("driver not loaded")

    chain = ChainProbe([("pynvml", fails), ("nvidia-smi", lambda: FakeProbe([]))])
    with pytest.raises(NoGpuAvailable) as info:
        get_target_gpu(probe=chain, environ={"GPUPLANE_ASSIGNED_GPUS": AA})
    assert info.value.tried == (("pynvml", "OSError: driver not loaded"), ("nvidia-smi", "sees no GPU"))
    assert "pynvml: OSError: driver not loaded; nvidia-smi: sees no GPU" in str(info.value)


# --- standard library only ---------------------------------------------------------------------------

LAZY_OPTIONAL = {"torch", "pynvml"}
"""Imported only inside the probe that needs them."""


def test_gpu_py_imports_only_the_standard_library() -> None:
    tree = ast.parse(GPU_PY.read_text())
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: gpu.py must work as a single copied file"
            roots = [(node.module or "").split(".")[0]]
        else:
            continue
        for root in roots:
            if root == "__future__" or root in sys.stdlib_module_names:
                continue
            assert root in LAZY_OPTIONAL, f"gpu.py imports {root}"
            assert id(node) not in top_level, f"{root} must be imported lazily"


def test_gpu_py_works_as_a_lone_copied_file(tmp_path: Path) -> None:
    """Copied alone and run with no site-packages (-I -S): it imports, parses and reports clearly."""
    (tmp_path / "gpu.py").write_text(GPU_PY.read_text())
    script = textwrap.dedent("""\
        import sys
        sys.path.insert(0, sys.argv[1])
        import gpu
        extra = {m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - {"gpu", "__main__"}
        assert not extra, extra
        assert gpu.vram_budget_gb({"VRAM_BUDGET_GB": "3.5"}) == 3.5
        try:
            gpu.get_target_gpu(environ={"GPUPLANE_ASSIGNED_GPUS": "GPU-aa", "PATH": sys.argv[1]})
        except gpu.NoGpuAvailable as exc:
            print(exc)
        """)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Assigned: GPU-aa (from GPUPLANE_ASSIGNED_GPUS)" in done.stdout
    assert "nvidia-smi: FileNotFoundError: nvidia-smi is not on PATH" in done.stdout


def test_package_reexports() -> None:
    assert set(gpuplane_runtime.__all__) <= set(gpu.__all__)
    assert gpuplane_runtime.get_target_gpu is get_target_gpu
