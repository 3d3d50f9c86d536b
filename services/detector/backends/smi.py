"""nvidia-smi backend: parses ``--query-gpu`` CSV and the ``topo -m`` matrix.

For machines where the NVML Python binding cannot load but the ``nvidia-smi`` binary works.
The parsers are pure functions over captured text, so they are tested on real output.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable, Sequence
from typing import ClassVar

from pydantic import ValidationError

from services.detector.backends.base import BackendUnavailable, HostScan, bus_sort_key, normalize_bus_id
from services.detector.core import precision_support
from shared.contracts import Gpu, InventorySource
from shared.errors import DetectionError

log = logging.getLogger(__name__)

Runner = Callable[[list[str]], str]

TIMEOUT_S = 10.0

QUERY_FIELDS: tuple[str, ...] = (
    "index",
    "uuid",
    "name",
    "pci.bus_id",
    "memory.total",
    "memory.used",
    "memory.free",
    "utilization.gpu",
    "compute_cap",
    "temperature.gpu",
    "power.draw",
    "power.limit",
    "clocks.max.sm",
)
"""What the backend asks nvidia-smi for, in this order."""

_ALIASES = {"gpu_uuid": "uuid", "gpu_name": "name", "gpu_bus_id": "pci.bus_id"}
_ABSENT = {"", "N/A", "[N/A]", "Not Supported", "[Not Supported]"}
_FAULTS = {
    "[GPU is lost]": "GPU is lost",
    "[Unknown Error]": "Unknown Error",
    "[GPU requires reset]": "GPU requires reset",
}
_HEADER_CELL = re.compile(r"^[a-z_][A-Za-z0-9_.]*(?: \[[^\]]+\])?$")
_NUMBER = re.compile(r"^(-?\d+(?:\.\d+)?)(?: ?(?:MiB|W|%|MHz|C|us|ms))?$")
_LOST_PREFIX = "Unable to determine the device handle"
_LOST_HANDLE = re.compile(_LOST_PREFIX + r" for GPU ?(\d+): ([0-9A-Fa-f:.]+): (.+)$")
_CC = re.compile(r"^\d+\.\d+$")
_NO_DEVICES = "No devices were found"
_NV_LINK = re.compile(r"^NV(\d+)$")
_GPU_LABEL = re.compile(r"^GPU(\d+)$")


class SmiCommandFailed(DetectionError):
    """nvidia-smi ran and exited non-zero; the message carries what it printed."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"{' '.join(argv)} exited with {returncode}: {output}")
        self.argv = tuple(argv)
        self.returncode = returncode
        self.output = output


def run_command(argv: list[str]) -> str:
    """Run an nvidia-smi argv and return its stdout (10 s limit).

    A missing binary raises ``BackendUnavailable``; a non-zero exit ``SmiCommandFailed``.
    """
    binary = argv[0]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except FileNotFoundError as err:
        where = "not found on PATH" if "/" not in binary else f"{binary} does not exist"
        raise BackendUnavailable(f"nvidia-smi: {where}") from err
    except PermissionError as err:
        raise BackendUnavailable(f"nvidia-smi: {binary} is not executable") from err
    except subprocess.TimeoutExpired as err:
        raise DetectionError(f"nvidia-smi: no answer within {TIMEOUT_S:g} s ({' '.join(argv)})") from err
    # A GPU nvidia-smi cannot reach is reported on stderr (and may turn the exit status
    # non-zero) while the others are listed on stdout; hand both to the parser.
    lost = [line for line in done.stderr.splitlines() if line.startswith(_LOST_PREFIX)]
    if done.returncode != 0 and not (lost and done.stdout.strip()):
        # nvidia-smi prints most of its errors on stdout.
        raise SmiCommandFailed(argv, done.returncode, done.stderr.strip() or done.stdout.strip())
    return "\n".join([done.stdout.rstrip("\n"), *lost]) if lost else done.stdout


def parse_query_csv(text: str, fields: Sequence[str] = QUERY_FIELDS) -> list[Gpu]:
    """GPUs from ``nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]`` output, by bus id.

    ``fields`` names the columns when the output has no header; a header line, when present,
    names them instead. Values may carry units (``" MiB"``, ``" W"``, ``" %"``, ``" MHz"``).
    ``[N/A]``/``[Not Supported]`` become None; ``[GPU is lost]``/``[Unknown Error]`` in a row, or an
    "Unable to determine the device handle" line, make that GPU unhealthy. Columns not asked for
    keep neutral defaults (index = row, uuid ``unknown-<index>``, used memory 0).
    Raises ``DetectionError`` on a row that does not fit the columns.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith(_NO_DEVICES) for line in lines):
        return []
    columns = [_ALIASES.get(f, f) for f in fields]
    if lines and _is_header(lines[0]):
        columns = [_ALIASES.get(c, c) for c in (_strip_unit(cell) for cell in _cells(lines[0]))]
        lines = lines[1:]
    gpus: list[Gpu] = []
    for line in lines:
        lost = _LOST_HANDLE.match(line)
        if lost is not None:
            gpus.append(_lost_gpu(int(lost.group(1)), normalize_bus_id(lost.group(2)), lost.group(3)))
            continue
        cells = _cells(line)
        if len(cells) != len(columns):
            raise DetectionError(
                f"nvidia-smi: expected {len(columns)} values per GPU, got {len(cells)} in line {line!r}"
            )
        try:
            gpus.append(_row_to_gpu(dict(zip(columns, cells, strict=True)), default_index=len(gpus)))
        except ValidationError as err:
            raise DetectionError(f"nvidia-smi: unusable values in line {line!r}: {err}") from err
    gpus.sort(key=lambda g: (bus_sort_key(g.pci_bus_id), g.index))
    return gpus


def parse_topo_matrix(text: str) -> dict[int, tuple[int, ...]]:
    """NVLink peers per GPU index from ``nvidia-smi topo -m``: a cell ``NV<n>`` joins row and column.

    Every GPU row appears, with ``()`` when it has no NVLink. NIC/mlx columns and rows, and the
    affinity columns, are ignored; so is everything from the ``Legend:`` on.
    """
    columns: list[str] | None = None
    peers: dict[int, tuple[int, ...]] = {}
    for raw in text.splitlines():
        tokens = raw.split()
        if not tokens:
            continue
        if tokens[0].startswith("Legend"):
            break
        if columns is None:
            if _GPU_LABEL.match(tokens[0]) and "X" not in tokens:
                columns = _device_columns(tokens)
            continue
        row = _GPU_LABEL.match(tokens[0])
        if row is None:
            continue
        linked = []
        for label, cell in zip(columns, tokens[1 : 1 + len(columns)], strict=False):
            column = _GPU_LABEL.match(label)
            if column is not None and _NV_LINK.match(cell):
                linked.append(int(column.group(1)))
        peers[int(row.group(1))] = tuple(sorted(linked))
    return peers


def _device_columns(header: list[str]) -> list[str]:
    # The device labels come first; "CPU Affinity", "NUMA Affinity", "GPU NUMA ID" follow.
    columns: list[str] = []
    for token in header:
        if token in ("CPU", "NUMA") or (token == "GPU" and columns):
            break
        columns.append(token)
    return columns


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split(",")]


def _is_header(line: str) -> bool:
    cells = _cells(line)
    return all(_HEADER_CELL.match(cell) for cell in cells) and not any(c in _ABSENT for c in cells)


def _strip_unit(cell: str) -> str:
    return cell.split(" [", 1)[0]


def _lost_gpu(index: int, bus_id: str, reason: str) -> Gpu:
    return Gpu(
        index=index,
        uuid=f"unknown-{index}",
        name="unknown",
        pci_bus_id=bus_id,
        vram_total_mb=0,
        vram_used_mb=0,
        vram_free_mb=0,
        healthy=False,
        health_reason=f"nvidia-smi: unable to determine the device handle: {reason}",
    )


def _row_to_gpu(row: dict[str, str], *, default_index: int) -> Gpu:
    faults = [f"{_FAULTS[value]} ({column})" for column, value in row.items() if value in _FAULTS]
    values = {
        column: (None if value in _ABSENT or value in _FAULTS else value) for column, value in row.items()
    }
    index = _int(values.get("index"))
    index = default_index if index is None else index
    total = _int(values.get("memory.total")) or 0
    used = _int(values.get("memory.used"))
    free = _int(values.get("memory.free"))
    if used is None:
        used = max(total - free, 0) if free is not None else 0
    if free is None:
        free = max(total - used, 0)
    compute_capability = values.get("compute_cap")
    if compute_capability is not None and not _CC.match(compute_capability):
        compute_capability = None
    fp16, bf16 = precision_support(compute_capability)
    return Gpu(
        index=index,
        uuid=values.get("uuid") or f"unknown-{index}",
        name=values.get("name") or "unknown",
        pci_bus_id=normalize_bus_id(values.get("pci.bus_id") or ""),
        vram_total_mb=total,
        vram_used_mb=used,
        vram_free_mb=free,
        utilization_percent=_float(values.get("utilization.gpu")),
        compute_capability=compute_capability,
        supports_fp16=fp16,
        supports_bf16=bf16,
        temperature_c=_float(values.get("temperature.gpu")),
        power_draw_w=_float(values.get("power.draw")),
        power_limit_w=_float(values.get("power.limit")),
        max_sm_clock_mhz=_int(values.get("clocks.max.sm")),
        healthy=not faults,
        health_reason=f"nvidia-smi: {'; '.join(faults)}" if faults else None,
    )


def _number(value: str | None) -> str | None:
    if value is None:
        return None
    match = _NUMBER.match(value)
    if match is None:
        raise DetectionError(f"nvidia-smi: expected a number, got {value!r}")
    return match.group(1)


def _int(value: str | None) -> int | None:
    number = _number(value)
    return None if number is None else int(float(number))


def _float(value: str | None) -> float | None:
    number = _number(value)
    return None if number is None else float(number)


class SmiBackend:
    """GPU inventory from the ``nvidia-smi`` binary."""

    NAME: ClassVar[str] = "nvidia-smi"
    SOURCE: ClassVar[InventorySource] = InventorySource.NVIDIA_SMI

    def __init__(
        self, *, host: str, binary: str, runner: Runner, fields: tuple[str, ...] = QUERY_FIELDS
    ) -> None:
        """Wrap a runner known to work; use ``open`` to probe one."""
        self._host = host
        self._binary = binary
        self._runner = runner
        self._fields = fields
        self._topology_for: tuple[tuple[int, str], ...] | None = None
        self._topology: dict[int, tuple[int, ...]] = {}
        self._topology_problem: str | None = None
        # Last uuid/name per bus id, so a GPU whose handle is lost keeps its identity.
        self._identity: dict[str, tuple[str, str]] = {}

    @classmethod
    def open(cls, *, host: str, binary: str = "nvidia-smi", runner: Runner | None = None) -> SmiBackend:
        """Probe nvidia-smi once; ``BackendUnavailable`` says why it cannot be used here."""
        backend = cls(host=host, binary=binary, runner=runner or run_command)
        try:
            parse_query_csv(backend._query(), backend._fields)
        except BackendUnavailable:
            raise
        except DetectionError as err:
            raise BackendUnavailable(f"nvidia-smi: {err}") from err
        return backend

    def close(self) -> None:
        """Nothing to release: every scan runs its own process."""

    def scan(self) -> list[HostScan]:
        """Run the query (and ``topo -m`` when the GPU set changed)."""
        problems: list[str] = []
        gpus = [self._remember(gpu) for gpu in parse_query_csv(self._query(), self._fields)]
        if "compute_cap" not in self._fields:
            problems.append(
                "nvidia-smi: this driver cannot report compute capability; "
                "fp16/bf16 support is unknown until the NVIDIA driver is updated"
            )
        peers = self._peers(gpus)
        if self._topology_problem:
            problems.append(self._topology_problem)
        indices = {gpu.index for gpu in gpus}
        gpus = [
            gpu.model_copy(
                update={"nvlink_peers": tuple(p for p in peers.get(gpu.index, ()) if p in indices)}
            )
            for gpu in gpus
        ]
        return [HostScan(host=self._host, source=self.SOURCE, gpus=tuple(gpus), problems=tuple(problems))]

    def _query(self) -> str:
        try:
            return self._run_query()
        except BackendUnavailable:
            raise
        except DetectionError as err:
            # Drivers before ~510 do not know compute_cap; ask again without it.
            if "compute_cap" not in self._fields or "not a valid field" not in str(err):
                raise
            log.info("nvidia-smi does not know compute_cap; querying without it")
            self._fields = tuple(f for f in self._fields if f != "compute_cap")
            return self._run_query()

    def _run_query(self) -> str:
        argv = [self._binary, f"--query-gpu={','.join(self._fields)}", "--format=csv,noheader,nounits"]
        return self._runner(argv)

    def _remember(self, gpu: Gpu) -> Gpu:
        if not gpu.uuid.startswith("unknown-"):
            self._identity[gpu.pci_bus_id] = (gpu.uuid, gpu.name)
            return gpu
        known = self._identity.get(gpu.pci_bus_id)
        if known is None:
            return gpu
        return gpu.model_copy(update={"uuid": known[0], "name": known[1]})

    def _peers(self, gpus: list[Gpu]) -> dict[int, tuple[int, ...]]:
        # The matrix only changes with the GPU set, and topo -m is slow on big machines.
        key = tuple((gpu.index, gpu.uuid) for gpu in gpus)
        if key == self._topology_for:
            return self._topology
        self._topology_for = key
        try:
            self._topology = parse_topo_matrix(self._runner([self._binary, "topo", "-m"]))
            self._topology_problem = None
        except DetectionError as err:
            self._topology = {}
            self._topology_problem = f"nvidia-smi topo -m failed, so NVLink peers are unknown: {err}"
        return self._topology
