"""`import orchfs` stays light; the CLI does not need the test dependencies."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_orchfs_is_light():
    modules = loaded_after("import orchfs")
    for heavy in ("click", "cryptography", "s3fs", "yaml", "pytest", "keyring", "botocore", "orchfs.cli"):
        assert heavy not in modules, heavy


def test_cli_and_demo_need_no_test_dependencies():
    modules = loaded_after("import orchfs.cli, orchfs.sample, orchfs.migrate, orchfs.doctor")
    assert "pytest" not in modules and "hypothesis" not in modules
