"""The ``orchfs`` command line (click). Groups are importable for embedding."""

from __future__ import annotations

import json
import sys
import tempfile
from typing import Any

import click

from .filesystem import OrchFileSystem


def _emit(ctx: click.Context, document: Any, human: str) -> None:
    if ctx.obj.get("json"):
        click.echo(json.dumps(document, indent=2, default=str))
    else:
        click.echo(human)


@click.group()
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    envvar="ORCHFS_ROOT",
    help="Repository root (default: walk up to .git/ or workflow.yaml).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def main(ctx: click.Context, root: str | None, as_json: bool) -> None:
    """orchfs: orchestrator state in one .orchestrator/ directory.

    \b
    Example:
      orchfs demo
    """
    ctx.ensure_object(dict)
    ctx.obj["root"] = root
    ctx.obj["json"] = as_json


@main.command()
@click.option("--keep", is_flag=True, help="Keep the demo repository instead of deleting it.")
@click.pass_context
def demo(ctx: click.Context, keep: bool) -> None:
    """Build a v1 repository in a temp dir and walk through orchfs on it.

    \b
    Example:
      orchfs demo --keep
    """
    from .testing import build_legacy_repo

    workdir = tempfile.mkdtemp(prefix="orchfs-demo-")
    repo = build_legacy_repo(workdir)
    steps: list[dict[str, Any]] = []

    def step(title: str, detail: Any) -> None:
        steps.append({"step": title, "detail": detail})
        if not ctx.obj.get("json"):
            click.echo(f"== {title}")
            click.echo(detail if isinstance(detail, str) else json.dumps(detail, indent=2))

    legacy = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    step("a v1 repository with scattered state files", legacy)
    fs = OrchFileSystem(root=str(repo))
    fs.pipe_file("state.json", b'{"phase": "review"}\n')
    fs.makedirs("checkpoints", exist_ok=True)
    fs.pipe_file("checkpoints/cp_3.json", b'{"checkpoint": 3}\n')
    step("writes land in .orchestrator/ atomically", fs.find(""))
    resolution = fs.resolve("state.json")
    step("which file serves state.json?", {"layer": resolution.layer, "url": resolution.url})
    step("the bytes read back through orch://", fs.cat_file("state.json").decode())
    if ctx.obj.get("json"):
        click.echo(json.dumps({"root": str(repo), "steps": steps}, indent=2, default=str))
    if not keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    elif not ctx.obj.get("json"):
        click.echo(f"demo repository kept at {repo}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(obj={}))
