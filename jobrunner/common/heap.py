"""Short garbage-collector pauses in long-running services (no noisy neighbour).

A full collection walks every object the collector tracks, and a service holds tens of thousands
that live as long as it does: modules, classes, the web app's routes and handlers, settings. A
busy service (a job flooding its output) runs a full collection every few seconds, and each one
walked all of them: 100 ms and more on a loaded machine, during which no other job's line moves
(measured while a job flooded: 654 ms in the API, 338 ms in the runner). Frozen once the service
has started, they are never walked again; a collection then costs what the work since start-up
left alive.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect what start-up left behind, then exempt every object still alive from all later
    collections (they are never freed: call once, after start-up, not per request)."""
    gc.collect()
    gc.freeze()


# Young objects a service may allocate, net of those freed, before the collector's youngest
# pass: CPython's 700 made the API run it 15-40 times a second while it fanned 12,000
# lines a second out (a pass walks every young object still alive: the batches, inboxes and
# writes of the moment) and it found nothing to free, as the API's objects form no cycles.
# The runner too: 2 % of its CPU at 100 jobs printing 200 lines/s each, 2-3 passes a second
# over its reads' and messages' objects of the moment. The projector too: a flood's rows are
# tuples of strings, numbers and times, which a pass walks once and then stops tracking, but
# each event's decoded lines live only until its rows are built, and at 700 most of them were
# walked as well (a pass every 350 lines): 10,000 took 4.8 % off its instructions a line
# (bench.projector_lines_cost, session 39).
# The few cycles some library makes wait a little longer (at most this many objects).
YOUNG_THRESHOLD = 10_000


def collect_young_less_often() -> None:
    """Raise the youngest generation's threshold to ``YOUNG_THRESHOLD`` (the older ones keep
    theirs): fewer passes, each over more objects, most of which are freed before it."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
