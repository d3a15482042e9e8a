"""`import orchfs` stays light; the CLI does not need the test dependencies."""

from __future__ import annotations

import os
import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


# What a command on a local repository never uses: fsspec (and with it asyncio, ssl and
# the entry-point scan of importlib.metadata), the object-storage clients, the crypto.
UNUSED_LOCALLY = ("fsspec", "asyncio", "ssl", "importlib.metadata", "s3fs", "botocore", "cryptography")
# orchfs's own modules that only the overlay or object storage need.
OBJECT_STORAGE_ONLY = ("orchfs.conditional", "orchfs.overlay", "orchfs.layerindex")


def test_import_orchfs_is_light():
    modules = loaded_after("import orchfs")
    for heavy in ("click", "yaml", "pytest", "keyring", "orchfs.cli", "orchfs.filesystem", *UNUSED_LOCALLY):
        assert heavy not in modules, heavy
    # Nor the layout, whose dataclasses pull in inspect (with ast, dis and tokenize).
    assert modules & {"orchfs.layout", "dataclasses", "inspect"} == set()


def test_layout_names_still_import_on_first_use():
    modules = loaded_after(
        "import orchfs; from orchfs.layout import Layout, default_layout; "
        "assert orchfs.Layout is Layout and orchfs.default_layout is default_layout; "
        "assert orchfs.layout.Layout is Layout"
    )
    assert "orchfs.layout" in modules


def test_public_names_still_import_on_first_use():
    modules = loaded_after(
        "import orchfs, fsspec; assert fsspec.get_filesystem_class('orch') is orchfs.OrchFileSystem; "
        "from orchfs import Conflict, Resolution, load_config"
    )
    assert "orchfs.filesystem" in modules


def test_cli_help_loads_no_filesystem_machinery():
    modules = loaded_after("from orchfs.cli import main\ntry:\n main(['--help'])\nexcept SystemExit:\n pass")
    for heavy in ("yaml", "orchfs.filesystem", *UNUSED_LOCALLY):
        assert heavy not in modules, heavy


def test_cli_and_demo_need_no_test_dependencies():
    modules = loaded_after("import orchfs.cli, orchfs.sample, orchfs.migrate, orchfs.doctor")
    assert "pytest" not in modules and "hypothesis" not in modules


def test_migrate_of_a_local_repository_loads_no_fsspec(tmp_path):
    from orchfs.sample import build_legacy_repo

    repo = build_legacy_repo(tmp_path / "repo")
    modules = loaded_after(
        f"from orchfs.cli import main; main(['--root', {str(repo)!r}, '--quiet', 'migrate'], standalone_mode=False)"
    )
    assert "orchfs.migrate" in modules and not (repo / ".workflow_state.json").exists()
    # Nor what this run does not use: logging configured by no one (orchfs's loggers are
    # made on the first record after someone imports it), git in a directory without .git,
    # the overlay (migrate moves whole files and writes FORMAT through StateFiles) and the
    # conditional requests of object storage (a local lock takes none).
    assert not (repo / ".git").exists()
    for heavy in (*UNUSED_LOCALLY, "logging", "subprocess", "orchfs.filesystem", *OBJECT_STORAGE_ONLY):
        assert heavy not in modules, heavy


def test_doctor_of_a_local_repository_loads_no_fsspec(tmp_path):
    from orchfs.sample import build_legacy_repo

    repo = build_legacy_repo(tmp_path / "repo")
    code = f"from orchfs.cli import main\ntry:\n main(['--root', {str(repo)!r}, '--json', 'doctor'])\nexcept SystemExit:\n pass"
    modules = loaded_after(code)
    assert "orchfs.doctor" in modules and "orchfs.repository" in modules
    # Doctor looks for interrupted imports with snapshot's names, never at an archive.
    for heavy in (*UNUSED_LOCALLY, "orchfs.filesystem", "tarfile", "gzip"):
        assert heavy not in modules, heavy


def test_doctor_of_a_repository_with_secrets_loads_no_fsspec(tmp_path, monkeypatch):
    """Its secret check reads the secret store over the parts doctor opened, not the face."""
    import orchfs
    from orchfs.sample import build_legacy_repo

    repo = build_legacy_repo(tmp_path / "repo")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-user-key"))
    orchfs.OrchFileSystem(root=str(repo), key="A" * 43 + "=", skip_instance_cache=True).secrets.set(
        "TOKEN", "t"
    )
    # Without the key (none in the environment, no user key file): the secret is unreadable.
    program = (
        "import sys; from orchfs import doctor; "
        f"found = doctor.run({str(repo)!r}); print(' '.join(sorted(sys.modules))); "
        "print(' '.join(f.id for f in found))"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("ORCHFS_KEY", "ORCHFS_KEY_FILE", "ORCHFS_PASSPHRASE")
    }
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, env=env)
    modules, findings = out.stdout.splitlines()
    assert "secret-unreadable" in findings.split()
    assert "orchfs.secrets" in modules.split()
    for heavy in (*UNUSED_LOCALLY, "orchfs.filesystem"):
        assert heavy not in modules.split(), heavy
