"""What every benchmark's command line shares."""

from __future__ import annotations

import subprocess


def revision() -> str:
    """The code the figures came from (``git describe``), for the report's header."""
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"git {found.stdout.strip()}"
