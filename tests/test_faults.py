"""The fault-injection point: parsing ORCHFS_FAULT and killing at exactly the Nth hit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from orchfs import faults
from orchfs.errors import ConfigError

CHILD = """
from orchfs.faults import checkpoint
for i in range(1, 6):
    checkpoint("other")
    checkpoint("demo.step")
    print(i, flush=True)
"""


def test_parse():
    assert faults.parse("") is None
    fault = faults.parse("migrate.step:3")
    assert (fault.name, fault.at) == ("migrate.step", 3)
    assert faults.parse("a:b:12").name == "a:b"
    for bad in ("migrate.step", "migrate.step:0", ":3", "x:-1", "x:y"):
        with pytest.raises(ConfigError, match="ORCHFS_FAULT"):
            faults.parse(bad)


@pytest.mark.parametrize("at", [1, 3, 5])
def test_the_process_dies_at_exactly_the_nth_hit(at):
    env = {**os.environ, faults.ENV_VAR: f"demo.step:{at}"}
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == [str(i) for i in range(1, at)]


def test_past_the_last_hit_or_unset_nothing_happens():
    for env in (
        {**os.environ, faults.ENV_VAR: "demo.step:6"},
        {k: v for k, v in os.environ.items() if k != faults.ENV_VAR},
    ):
        proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.split() == ["1", "2", "3", "4", "5"]
