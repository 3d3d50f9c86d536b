"""What every benchmark's command line shares."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
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
