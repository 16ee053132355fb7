"""The failed first attempt of every test that ``--reruns`` ran again, printed at the end of the
run: its traceback beside the end of its captured output.

pytest-rerunfailures can print such an attempt's traceback (``--rerun-show-tracebacks``), but not
what the test captured meanwhile: the logs of the services it ran, which tell what they did
before the failure. When the rerun passes, that output is otherwise lost (CI keeps the run's
output only, and a Hypothesis test whose body passed stores no example either). With xdist the
workers' reports reach the controller, which prints them."""

from __future__ import annotations

import pytest

# Of each captured section (stdout, stderr, log) its end: its last lines, and of those the last
# characters (a few very long lines are a flood too). Enough to tell what a service did just
# before.
SECTION_LINES = 200
SECTION_CHARS = 20_000


class FirstAttempts:
    def __init__(self) -> None:
        self.reports: list[pytest.TestReport] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.outcome == "rerun":  # type: ignore[comparison-overlap]  # rerunfailures' own
            self.reports.append(report)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.reports:
            return
        terminalreporter.section("the failed attempts of the tests run again (--reruns)")
        # Each section once per test: an attempt that failed in its call and its teardown has
        # two reports, the second repeating the first's sections, and a later attempt's report
        # repeats the earlier attempts' too (pytest keeps an item's sections across reruns).
        printed: set[tuple[str, str, str]] = set()
        for report in self.reports:
            terminalreporter.write_sep("_", f"{report.nodeid} (failed in {report.when})")
            terminalreporter.line(report.longreprtext)
            for title, content in report.sections:
                if (report.nodeid, title, content) in printed:
                    continue
                printed.add((report.nodeid, title, content))
                terminalreporter.write_sep("-", title + _cut(content))
                terminalreporter.line(_end(content))


def _end(content: str) -> str:
    return "\n".join(content.splitlines()[-SECTION_LINES:])[-SECTION_CHARS:]


def _cut(content: str) -> str:
    """What the title says of a section printed in part."""
    end = _end(content)
    if len(end) == len(content.rstrip("\n")):
        return ""
    return f" (its last {len(end):,} of {len(content):,} characters)"


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(FirstAttempts(), "jobrunner-first-attempts")
