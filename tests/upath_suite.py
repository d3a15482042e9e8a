"""universal_pathlib's own test cases (``upath.tests``), from its source distribution.

The wheel leaves ``upath/tests`` out, so the cases come from the sdist of the installed
version: fetched once with ``pip download`` (PyPI, as the install step reaches it) into a
cache outside the project, unpacked there, and made importable as ``upath.tests``. Nothing
is copied into this repository. ``python -m tests.upath_suite`` fetches ahead of a run
(``.ci/run`` does, so the test step itself needs no network).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

__all__ = ["cache_dir", "fetch", "load_cases"]

DISTRIBUTION = "universal_pathlib"


def cache_dir() -> Path:
    """Where the unpacked ``upath/tests`` of the installed version is kept."""
    base = os.environ.get("ORCHFS_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "orchfs-tests"
    )
    return Path(base) / f"{DISTRIBUTION}-{importlib.metadata.version(DISTRIBUTION)}"


def fetch() -> Path:
    """Download the sdist of the installed version (once) and unpack its ``upath/tests``."""
    target = cache_dir()
    if (target / "upath" / "tests" / "cases.py").is_file():
        return target
    version = importlib.metadata.version(DISTRIBUTION)
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                scratch,
                f"{DISTRIBUTION}=={version}",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (sdist,) = Path(scratch).glob("*.tar.gz")
        unpacked = Path(scratch) / "unpacked"
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if "/upath/tests/" in m.name and m.isfile()]
            archive.extractall(unpacked, members=members, filter="data")
        (top,) = unpacked.iterdir()
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=target.parent))
        shutil.move(str(top / "upath"), str(staged / "upath"))
        try:
            staged.rename(target)  # whole or not at all: a concurrent fetch may have won
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
    return target


def load_cases() -> ModuleType:
    """``upath.tests.cases`` (importable after :func:`fetch`)."""
    try:
        return importlib.import_module("upath.tests.cases")
    except ImportError:
        pass
    import upath

    upath.__path__.append(str(fetch() / "upath"))
    return importlib.import_module("upath.tests.cases")


if __name__ == "__main__":
    print(fetch())
