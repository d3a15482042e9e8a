"""Deterministic fault injection: a process kills itself at the Nth hit of a named step.

Multi-step writes (migration steps, rollback steps, secret rotation) call
:func:`checkpoint` with a step name between the operations a crash could separate.
Crash tests run the operation in a child process with ``ORCHFS_FAULT=<name>:<n>``
(for example ``ORCHFS_FAULT=migrate.step:3``): the n-th time that process reaches
checkpoint ``<name>`` it sends itself ``SIGKILL``, which leaves the files exactly as a
power cut or an OOM kill would. Iterating n from 1 until the child exits normally
covers every point, with no timing involved.

The variable is read once, at import; unset, a checkpoint costs one comparison.
"""

from __future__ import annotations

import itertools
import os
from typing import NamedTuple

from .errors import ConfigError

__all__ = ["ENV_VAR", "Fault", "checkpoint", "parse"]

ENV_VAR = "ORCHFS_FAULT"


class Fault(NamedTuple):
    """Kill this process at hit number ``at`` of checkpoint ``name``."""

    name: str
    at: int


# Hits of the checkpoint the fault names. itertools.count's next() is atomic under the GIL:
# threads of one migration share it safely.
_HITS = itertools.count(1)


def parse(text: str) -> Fault | None:
    """``"<name>:<n>"`` -> :class:`Fault`; an empty string -> None."""
    if not text:
        return None
    name, _, number = text.rpartition(":")
    if not name or not number.isdigit() or int(number) < 1:
        raise ConfigError(
            f"{ENV_VAR}={text!r}: write <checkpoint name>:<hit number from 1>, e.g. migrate.step:3"
        )
    return Fault(name, int(number))


_FAULT = parse(os.environ.get(ENV_VAR, ""))


def checkpoint(name: str) -> None:
    """A named step boundary: SIGKILL this process if ``ORCHFS_FAULT`` names its Nth hit."""
    if _FAULT is None or _FAULT.name != name:
        return
    if next(_HITS) == _FAULT.at:
        import signal  # only a run under test ever gets here

        os.kill(os.getpid(), signal.SIGKILL)
