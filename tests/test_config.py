"""load_config: layers, deep merge, origins, errors with file and line, version pins."""

from __future__ import annotations

import pytest

import orchfs
from orchfs.errors import ConfigError, VersionPinError


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    return root


def env(**extra):
    return {"ORCHFS_ORG_CONFIG": "/nonexistent/org.yaml", **extra}


def test_layers_merge_deeply_with_origins(repo, tmp_path):
    org = tmp_path / "org.yaml"
    org.write_text("state:\n  lock_timeout: 30s\n  retention: {max_age: 7d, max_sessions: 20}\n")
    shared = tmp_path / "shared.yaml"
    shared.write_text("state:\n  retention: {max_sessions: 5}\nweb_mode: true\n")
    (repo / "workflow.yaml").write_text(
        "name: demo\ninclude:\n  - ../shared.yaml\n  - {repo: ../missing, path: workflow.yaml, optional: true}\n"
        "state:\n  legacy: migrate\n"
    )
    (repo / ".orchestra.yaml").write_text("state:\n  storage: /elsewhere\n")
    config = orchfs.load_config(repo, environ=env(ORCHFS_ORG_CONFIG=str(org), ORCHFS_LEGACY="off"))
    assert config.get("state.retention") == {"max_age": "7d", "max_sessions": 5}
    assert str(config.origin("state.retention.max_sessions")) == f"{shared}:2:15"
    assert str(config.origin("state.retention.max_age")).startswith(f"{org}:3")
    assert config.get("web_mode") is True
    assert config.get("state.storage") == "/elsewhere"
    assert config.get("state.legacy") == "off" and str(config.origin("state.legacy")) == "env:ORCHFS_LEGACY"
    assert config.lock_timeout == 30.0
    assert config.get("name") == "demo"
    explicit = orchfs.load_config(repo, environ=env(), legacy="read")
    assert explicit.get("state.legacy") == "read" and str(explicit.origin("state.legacy")) == "argument"
    assert str(orchfs.load_config(tmp_path / "repo", environ={}).origin("web_mode")) != "default"


def test_defaults_alone(repo):
    config = orchfs.load_config(repo, environ=env())
    assert config.get("state.legacy") == "read" and str(config.origin("state.legacy")) == "default"
    assert config.lock_timeout == 10.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state:\n  legacy: [oops\n", r"workflow.yaml:3:1: malformed YAML: expected"),
        ("state:\n  colour: red\n", r"workflow.yaml:2:3: unknown key 'state.colour'"),
        ("state:\n  legacy: sometimes\n", r"workflow.yaml:2:3: state.legacy is 'sometimes'"),
        ("state:\n  lock_timeout: soon\n", r"workflow.yaml:2:3: 'soon' is not a duration"),
        ("state:\n  retention: {max_age: 1d, forever: true}\n", r"unknown key 'state.retention.forever'"),
        ("web_mode: maybe\n", r"workflow.yaml:1:1: web_mode must be true or false"),
        ("include:\n  - nowhere.yaml\n", r"included file .*nowhere.yaml does not exist"),
    ],
)
def test_errors_name_file_line_and_column(repo, text, message):
    (repo / "workflow.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        orchfs.load_config(repo, environ=env())


def test_include_cycles_and_depth(repo, tmp_path):
    (repo / "workflow.yaml").write_text("include: [a.yaml]\n")
    (repo / "a.yaml").write_text("include: [b.yaml]\n")
    (repo / "b.yaml").write_text("include: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"include cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        orchfs.load_config(repo, environ=env())
    for i in range(12):
        (repo / f"d{i}.yaml").write_text(f"include: [d{i + 1}.yaml]\n")
    (repo / "d12.yaml").write_text("web_mode: false\n")
    (repo / "workflow.yaml").write_text("include: [d0.yaml]\n")
    with pytest.raises(ConfigError, match="deeper than 10"):
        orchfs.load_config(repo, environ=env())


def test_config_show_cli(repo):
    import json

    from click.testing import CliRunner

    from orchfs.cli import main

    (repo / "workflow.yaml").write_text("state:\n  legacy: migrate\n")
    result = CliRunner().invoke(main, ["--root", str(repo), "--json", "config", "show", "--show-origin"])
    document = json.loads(result.stdout)
    assert document["state.legacy"]["value"] == "migrate"
    assert document["state.legacy"]["origin"].endswith("workflow.yaml:2:3")
    human = CliRunner().invoke(main, ["--root", str(repo), "config", "show", "--show-origin"])
    assert 'state.legacy = "migrate"' in human.output


def test_version_pin(repo):
    (repo / "workflow.yaml").write_text('orchestrator_version: ">=2.7,<3"\n')
    assert orchfs.load_config(repo, orchestrator_version="2.8.0", environ=env()).get("orchestrator_version")
    with pytest.raises(VersionPinError, match=r"workflow.yaml:1:1: .*>=2.7,<3.*3.1"):
        orchfs.load_config(repo, orchestrator_version="3.1", environ=env())


def test_environment_layer_reaches_the_filesystem(repo, monkeypatch):
    monkeypatch.setenv("ORCHFS_LEGACY", "off")
    monkeypatch.setenv("ORCHFS_LOCK_TIMEOUT", "2.5s")
    monkeypatch.setenv("ORCHFS_WEB_MODE", "true")
    monkeypatch.setenv("ORCHFS_SESSION", "envsession")
    (repo / ".workflow_state.json").write_bytes(b"v1")
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    assert fs.legacy == "off" and fs.lock_timeout == 2.5
    assert fs.web_mode and fs.session_id == "envsession"
    assert not fs.exists("state.json")
    explicit = orchfs.OrchFileSystem(root=str(repo), legacy="read", skip_instance_cache=True)
    assert explicit.cat_file("state.json") == b"v1"


def test_legacy_off_unquoted_means_off(tmp_path):
    """`legacy: off` as documented (YAML 1.1 reads a bare off as false) selects the off phase."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "workflow.yaml").write_text("state:\n  legacy: off\n")
    config = orchfs.load_config(repo, environ={})
    assert config.get("state.legacy") == "off"
    (repo / ".workflow_state.json").write_bytes(b"v1")
    fs = orchfs.OrchFileSystem(root=str(repo), legacy=config.get("state.legacy"), skip_instance_cache=True)
    assert not fs.exists("state.json")
