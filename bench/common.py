"""What every benchmark's command line shares."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def revision() -> str:
    """The code the figures came from (``git describe``), for the report's header."""
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"git {found.stdout.strip()}"


def splice(document: str, generated: str, *, begin: str, end: str, section: str, title: str = "# Benchmarks") -> str:
    """``document`` with the block between ``begin`` and ``end`` replaced by ``generated`` (which holds the
    markers), or ``section`` added at the end holding it."""
    if begin in document and end in document:
        head, rest = document.split(begin, 1)
        _, tail = rest.split(end, 1)
        return head + generated + tail
    if not document.strip():
        document = f"{title}\n"
    return document.rstrip("\n") + f"\n\n{section}\n\n{generated}\n"


def publish(
    generated: str, out: Path | None, splice_into: Callable[[str, str], str], what: str, took_s: float
) -> None:
    """Print ``generated``, or write it into ``out`` with ``splice_into(existing, generated)``."""
    if out is None:
        print(generated)
        return
    existing = out.read_text() if out.exists() else ""
    out.write_text(splice_into(existing, generated))
    print(f"wrote the {what} section of {out} ({took_s:.0f} s)", file=sys.stderr)


def jsonable(value: object) -> object:
    """NaN as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_results(out: Path, stem: str, document: object, markdown: str) -> tuple[Path, Path]:
    """``<out>/<stem>.json`` (NaN as null) and ``<out>/<stem>.md``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    as_json, as_md = out / f"{stem}.json", out / f"{stem}.md"
    as_json.write_text(json.dumps(jsonable(document), indent=2) + "\n")
    as_md.write_text(markdown)
    return as_json, as_md


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]], not_run: Mapping[str, str]) -> str:
    """A Markdown table of ``rows``, then one row per variant that could not run, saying why."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for cells in rows:
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    for name, reason in not_run.items():
        cells = [f"**{name}**", f"not run: {reason}".replace("|", "/").replace("\n", " ")]
        cells += ["—"] * (len(columns) - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
