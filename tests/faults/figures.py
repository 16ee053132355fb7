"""What each fault did to its job, collected during the run and printed as a table at its end.

Also a pytest plugin (named in tests/conftest.py's ``pytest_plugins``): a figure recorded in a
test travels on that test's report, so the table is complete when the suite runs in parallel
(pytest-xdist), where the tests run in worker processes and only the controller prints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

PROPERTY = "fault_figure"


@dataclass
class Figure:
    fault: str
    outcome: str  # the job's status and error code, e.g. "failed LEASE_LOST"
    printed: int  # lines the tool wrote, by its own record
    stored: int  # lines in Postgres, each once and in order
    recovery_s: float | None  # fault's end -> first new line stored (or the job's end)
    terminal_s: float | None  # fault's end -> the job's terminal status in the read model
    holds: bool  # every invariant the test checks held
    note: str = ""


# Recorded by the running test, not yet on a report.
_PENDING: list[Figure] = []
# Every figure reported in this run (in the process that prints the summary).
FIGURES: list[Figure] = []


def record(figure: Figure) -> None:
    _PENDING.append(figure)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table() -> list[str]:
    rows = [
        "| fault | job | printed | stored | recover s | to end s | holds | note |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for f in FIGURES:
        rows.append(
            f"| {f.fault} | {f.outcome} | {f.printed} | {f.stored} | {seconds(f.recovery_s)} "
            f"| {seconds(f.terminal_s)} | {'yes' if f.holds else 'NO'} | {f.note} |"
        )
    return rows


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    while _PENDING:
        report.user_properties.append((PROPERTY, dataclasses.asdict(_PENDING.pop(0))))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if name == PROPERTY:
            FIGURES.append(Figure(**value))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    from tests.faults.services import SEPARATE_HOSTS

    terminalreporter.section("faults: what each fault did to its job")
    for row in table():
        terminalreporter.write_line(row)
    if not SEPARATE_HOSTS:
        terminalreporter.write_line(
            "NOTE: runners shared this host (no UTS namespace without root): a runner may have "
            "ended another's tool itself, which a runner on another machine cannot do."
        )
