"""Named points of a writer where a test may kill the process for real (``SIGKILL``), to prove it kill-safe.

A writer calls :func:`kill_point` between the steps of a change (a part written, a
generation renamed into place, ``CURRENT`` switched...). Nothing happens unless the
environment variable ``SKIMGFEAT_KILL_AT`` holds a number N: the Nth point the process
reaches then sends ``SIGKILL`` to the process itself, so that no ``finally`` block,
exit handler or buffered write runs, as when a machine loses power or a user kills
the job. ``SKIMGFEAT_KILL_TRACE=FILE`` appends each point's name to FILE (to count
the points of a run).
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "SKIMGFEAT_KILL_AT"
KILL_TRACE_ENV = "SKIMGFEAT_KILL_TRACE"
_reached = 0


def kill_point(name: str) -> None:
    """Count this point; SIGKILL the process if it is the one ``SKIMGFEAT_KILL_AT`` names."""
    global _reached
    kill_at, trace = os.environ.get(KILL_AT_ENV), os.environ.get(KILL_TRACE_ENV)
    if kill_at is None and trace is None:
        return
    _reached += 1
    if trace:
        with open(trace, "a", encoding="utf-8") as handle:
            handle.write(f"{_reached} {name}\n")
    if kill_at is not None and _reached == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)
