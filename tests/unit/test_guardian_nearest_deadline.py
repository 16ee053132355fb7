"""The guardian wakes for the nearest lease deadline of a running tool, kept as lines come
(``d`` renewals, ``+`` starts, ``-`` ends) instead of a pass over every deadline at each line:
it never sleeps past a deadline and kills exactly the tools a full pass would."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.services.runner.guardian_main import Deadlines

SERIALS = st.integers(min_value=1, max_value=6)
TIMES = st.integers(min_value=0, max_value=40).map(float)
LINES = st.lists(
    st.one_of(
        st.tuples(st.just("s"), SERIALS),
        st.tuples(st.just("+"), SERIALS),
        st.tuples(st.just("-"), SERIALS),
        st.tuples(st.just("d"), SERIALS, TIMES),
        st.tuples(st.just("now"), TIMES),
    ),
    max_size=60,
)


class FullPass:
    """The guardian before: every deadline looked at after every line."""

    def __init__(self, tools: dict[int, tuple[int, int] | None]) -> None:
        self.tools = tools
        self.at: dict[int, float] = {}

    def nearest(self) -> float | None:
        waiting = [at for serial, at in self.at.items() if self.tools.get(serial)]
        return min(waiting) if waiting else None

    def due(self, now: float) -> list[int]:
        due = [serial for serial, at in self.at.items() if at <= now and self.tools.get(serial)]
        for serial in due:
            del self.at[serial]
        return due


@settings(max_examples=500, deadline=None)
@given(LINES)
def test_the_nearest_deadline_kept_line_by_line_matches_a_full_pass(
    lines: list[tuple[Any, ...]],
) -> None:
    """Whatever the runner writes, the guardian kills the same tools a full pass would kill, and
    its wake-up is never later than the nearest deadline of a running tool."""
    tools: dict[int, tuple[int, int] | None] = {}
    brute_tools: dict[int, tuple[int, int] | None] = {}
    kept, brute = Deadlines(tools), FullPass(brute_tools)
    for line in lines:
        kind = line[0]
        if kind == "s":
            tools[line[1]] = brute_tools[line[1]] = None
        elif kind == "+":
            tools[line[1]] = brute_tools[line[1]] = (100 + line[1], 7)
            kept.started(line[1])
        elif kind == "-":
            tools.pop(line[1], None)
            brute_tools.pop(line[1], None)
            kept.forget(line[1])
            brute.at.pop(line[1], None)
        elif kind == "d":
            kept.write(line[1], line[2])
            if line[1] in brute_tools:
                brute.at[line[1]] = line[2]
        else:
            assert sorted(kept.due(line[1])) == sorted(brute.due(line[1]))
            # Not due again at once: the guardian sleeps after a pass, no poll(0) loop.
            assert kept.nearest is None or kept.nearest > line[1]
        nearest = brute.nearest()
        if nearest is not None:
            assert kept.nearest is not None
            assert kept.nearest <= nearest


def test_a_renewal_wakes_the_guardian_once_and_then_it_sleeps_until_the_new_deadline() -> None:
    """A renewed lease leaves an early wake-up; the pass at it finds nothing due and sets the
    wake-up to the renewed deadline."""
    tools: dict[int, tuple[int, int] | None] = {1: (101, 7), 2: (102, 7)}
    deadlines = Deadlines(tools)
    deadlines.write(1, 10.0)
    deadlines.write(2, 20.0)
    deadlines.write(1, 30.0)
    assert deadlines.nearest == 10.0
    assert deadlines.due(9.0) == []
    assert deadlines.due(10.0) == []
    assert deadlines.nearest == 20.0
    assert deadlines.due(25.0) == [2]
    assert deadlines.nearest == 30.0


def test_a_deadline_counts_only_once_its_tool_runs() -> None:
    """A deadline written between the spawn's ``s`` and its ``+`` is waited for from the ``+``;
    one for a tool never written is ignored."""
    tools: dict[int, tuple[int, int] | None] = {1: None}
    deadlines = Deadlines(tools)
    deadlines.write(1, 5.0)
    deadlines.write(9, 1.0)
    assert deadlines.nearest is None
    tools[1] = (101, 7)
    deadlines.started(1)
    assert deadlines.nearest == 5.0
    assert deadlines.due(6.0) == [1]
