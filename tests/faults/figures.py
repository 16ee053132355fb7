"""What each fault did to its job, collected during the run and printed as a table at its end.

Also a pytest plugin (named in tests/conftest.py's ``pytest_plugins``): a figure recorded in a
test travels on that test's report (tests/reported_figures.py), so the table is complete when the
suite runs in parallel.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import pytest

from tests.reported_figures import ReportedFigures


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


REPORTED = ReportedFigures("fault_figure", Figure, "faults: what each fault did to its job", table)
FIGURES = REPORTED.figures
record = REPORTED.record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    REPORTED.attach(report)
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    REPORTED.receive(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTED.summary(terminalreporter):
        return
    from tests.faults.services import SEPARATE_HOSTS

    if not SEPARATE_HOSTS:
        terminalreporter.write_line(
            "NOTE: runners shared this host (no UTS namespace without root): a runner may have "
            "ended another's tool itself, which a runner on another machine cannot do."
        )
