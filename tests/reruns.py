"""The failed first attempt of every test that ``--reruns`` ran again, printed at the end of the
run: its traceback and the end of its captured output.

pytest-rerunfailures reports such an attempt with the outcome "rerun", and ``-rR`` names the test
and nothing else; when the rerun passes, what failed is lost (CI keeps the run's output only, and
a Hypothesis test whose body passed stores no example either). With xdist the workers' reports
reach the controller, which prints them."""

from __future__ import annotations

import pytest

# Of each captured section (stdout, stderr, log) its last lines: enough to tell what a service
# did just before, without a flood of a chatty test's output.
SECTION_LINES = 200


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
        for report in self.reports:
            terminalreporter.write_sep("_", f"{report.nodeid} (failed in {report.when})")
            terminalreporter.line(report.longreprtext)
            for title, content in report.sections:
                lines = content.splitlines()
                if len(lines) > SECTION_LINES:
                    title += f" (its last {SECTION_LINES} of {len(lines)} lines)"
                terminalreporter.write_sep("-", title)
                terminalreporter.line("\n".join(lines[-SECTION_LINES:]))


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(FirstAttempts(), "jobrunner-first-attempts")
