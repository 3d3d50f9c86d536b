"""Files other tools read (the YAML mirror, the compose override): replaced atomically and durably."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from shared.errors import OperationFailed


class FileWriteFailed(OperationFailed):
    """A generated file could not be written (or restored); the message names the file and why."""


def read_text(path: Path) -> str | None:
    """The file's text, or None when there is no file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> str | None:
    """Replace ``path`` with ``text`` durably (temp file, fsync, rename, fsync of the directory).

    A reader sees the old file or the new one, never half of either. Returns the previous content
    (None when there was no file) for ``restore``.
    """
    temp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        temp = Path(name)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fchmod(file.fileno(), 0o644)
            os.fsync(file.fileno())
        previous = read_text(path)
        os.replace(temp, path)
        _fsync_directory(path.parent)
    except OSError as exc:
        if temp is not None:
            temp.unlink(missing_ok=True)
        raise FileWriteFailed(f"cannot write {path}: {exc.strerror or exc}") from exc
    return previous


def restore(path: Path, previous: str | None) -> None:
    """Put back what ``write_atomic`` returned: the old content, or no file at all."""
    if previous is not None:
        write_atomic(path, previous)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise FileWriteFailed(f"cannot remove {path}: {exc.strerror or exc}") from exc
