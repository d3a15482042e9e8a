"""A small orchestrator that keeps all of its state through orchfs.

It runs a fixed list of steps. Progress lives in ``state.json`` and is advanced under
the repository lock (``update_json``), every step leaves a checkpoint and a log line,
and the report is signed with a token kept in the encrypted secrets. Because it only
ever names logical paths, the same code:

* resumes a v1 repository (``.workflow_state.json`` and friends), read in place;
* runs in web mode, in a session of its own, with the session copied to a persist
  target (a directory, ``memory://`` or ``s3://``) so that another machine can pick it
  up after this one is gone.

    python orchestrator.py --root REPO                      # run (or resume) the steps
    python orchestrator.py --root REPO --web --session S1 --persist /mnt/persist
    python orchestrator.py --root REPO --stop-after 2       # run two steps, then stop

The secrets key comes from the usual sources (``ORCHFS_KEY``, ``ORCHFS_KEY_FILE``...),
and the token from ``orchfs secrets set API_TOKEN``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import sys
from collections.abc import Iterator
from typing import Any

import orchfs
from orchfs.sessions import Persister, restore

STEPS = ("plan", "fetch", "build", "test", "report")


def done_steps(state: dict[str, Any]) -> list[str]:
    """The steps a state says are done. A v1 state counts them in ``step`` instead."""
    if "done" in state:
        return list(state["done"])
    return list(STEPS[: int(state.get("step", 0))])


def run_step(fs: orchfs.OrchFileSystem, name: str, token: str) -> None:
    """One step: its checkpoint, its log line, then the state says it is done."""
    inputs = fs.ls("checkpoints", detail=False) if fs.isdir("checkpoints") else []
    result = {"step": name, "inputs": sorted(path.rsplit("/", 1)[-1] for path in inputs)}
    if name == "report":
        body = json.dumps(result, sort_keys=True).encode()
        result["signature"] = hmac.new(token.encode(), body, hashlib.sha256).hexdigest()
    fs.pipe_file(f"checkpoints/{name}.json", json.dumps(result, sort_keys=True).encode())
    fs.append_line("log.jsonl", {"event": "step", "name": name})

    def advance(state: dict[str, Any]) -> dict[str, Any]:
        done = done_steps(state)
        if name not in done:  # a rerun of a step that was done changes nothing
            done.append(name)
        return {**state, "done": done, "step": len(done)}

    fs.update_json("state.json", advance)


@contextlib.contextmanager
def persisted(fs: orchfs.OrchFileSystem, url: str | None) -> Iterator[None]:
    """Bring the session back from ``url``, and keep copying it there while we run."""
    if url is None:
        yield
        return
    restore(fs, url)
    with Persister(fs, url, interval=5.0):
        yield


def run(
    root: str,
    *,
    web: bool = False,
    session: str | None = None,
    persist: str | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) the steps; return what was done."""
    fs = orchfs.OrchFileSystem(root=root, web_mode=web, session=session, skip_instance_cache=True)
    token = fs.secrets.get("API_TOKEN")
    ran = []
    with persisted(fs, persist):
        state = json.loads(fs.cat_file("state.json")) if fs.exists("state.json") else {}
        for name in STEPS:
            if name in done_steps(state) or (stop_after is not None and len(ran) >= stop_after):
                continue
            run_step(fs, name, token)
            ran.append(name)
        state = json.loads(fs.cat_file("state.json")) if fs.exists("state.json") else {}
    return {"ran": ran, "done": done_steps(state), "session": fs.session_id}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--web", action="store_true", help="web mode: a session of its own")
    parser.add_argument("--session", help="the session id (web mode makes one otherwise)")
    parser.add_argument("--persist", help="keep the session here: a directory, memory://, s3://...")
    parser.add_argument("--stop-after", type=int, help="stop after this many steps")
    args = parser.parse_args(argv)
    try:
        report = run(
            args.root, web=args.web, session=args.session, persist=args.persist, stop_after=args.stop_after
        )
    except orchfs.OrchFSError as exc:  # one line, with the fix
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
