"""Count what every service sends to and gets from nats-server, op by op (RESULTS, "Dispatch:
what NATS does per job, session 26").

``JOBRUNNER_BENCH_NATSCOUNT=<dir> python -m bench --only dispatch`` puts ``site/`` ahead of the
services' path, so its ``sitecustomize`` logs each NATS protocol op of every service's
connections into ``<dir>``; the dispatch scenario writes each job's POST start and the time its
first line reached the client there (``JOBRUNNER_BENCH_NATSCOUNT_GAP``: seconds between jobs, so
that each job's tail ends before the next POST), and with ``JOBRUNNER_BENCH_NATSCOUNT_IDLE``
waits that many seconds after the last job, the window written to ``idle.tsv``: what the
system does for the jobs once they are over (markers handed to the runners' sweeps and boards).
``python -m bench.natscount.report <dir>`` prints the ops per job by process, connection and
subject: before the first line reached the client, and after. A measuring aid: it patches
nats-py's private transport methods, so it is never on outside a bench run that asks for it."""

from __future__ import annotations

import asyncio
import os
import time

DIR_VARIABLE = "JOBRUNNER_BENCH_NATSCOUNT"
GAP_VARIABLE = "JOBRUNNER_BENCH_NATSCOUNT_GAP"
IDLE_VARIABLE = "JOBRUNNER_BENCH_NATSCOUNT_IDLE"


def mark(text: str) -> None:
    """One line into the marks file of the count, when one is being made."""
    directory = os.environ.get(DIR_VARIABLE)
    if directory:
        with open(os.path.join(directory, "marks.tsv"), "a") as marks:
            marks.write(text + "\n")


def gap_seconds() -> float:
    return float(os.environ.get(GAP_VARIABLE, "0") or 0)


async def idle() -> None:
    """A counted run's idle window after its jobs, when one is asked for: its start and end
    (monotonic seconds, as the ops' log) into ``idle.tsv``."""
    directory = os.environ.get(DIR_VARIABLE)
    seconds = float(os.environ.get(IDLE_VARIABLE, "0") or 0)
    if not directory or not seconds:
        return
    start = time.monotonic()
    await asyncio.sleep(seconds)
    mark_window(os.path.join(directory, "idle.tsv"), start, time.monotonic())


def mark_window(path: str, start: float, end: float) -> None:
    with open(path, "w") as window:
        window.write(f"{start}\t{end}\n")
