"""The bundled demo tools print what the seed's wireframes show: run as the runner runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

TOOLS_ON_DATEV = ("scraper", "enrich_email", "enrich_search")


def run_tool(tool: str, *args: str) -> tuple[int, list[str]]:
    """``tool``'s exit code and output lines, at full speed."""
    done = subprocess.run(
        [sys.executable, "-m", f"jobrunner.demo_tools.{tool}", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "JOBRUNNER_DEMO_PACE": "0"},
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout.splitlines()


FOUND = re.compile(r"INFO    (\d+) Einträge gefunden")


@pytest.mark.parametrize(
    ("tool", "loading", "summary"),
    [
        (
            "scraper",
            "INFO    Suche Steuerberater für PLZ 10*...",
            r"SUCCESS (\d+) Steuerberater gespeichert, (\d+) unvollständig",
        ),
        (
            "enrich_email",
            "INFO    Lade Einträge für PLZ 10*...",
            r"SUCCESS (\d+) Websites gefunden, (\d+) ohne Ergebnis",
        ),
        (
            "enrich_search",
            "INFO    Lade Einträge für PLZ 10*...",
            r"SUCCESS (\d+) Websites gefunden, (\d+) ohne Ergebnis",
        ),
    ],
)
def test_tool_says_what_it_loads_and_works_through_every_entry(
    tool: str, loading: str, summary: str
) -> None:
    """The operator sees the PLZ loaded, how many entries, one [i/N] line each, then a summary."""
    code, lines = run_tool(tool, "--plz-filter", "10")
    assert code == 0
    found_at = lines.index(loading) + 1
    found = FOUND.fullmatch(lines[found_at])
    assert found is not None, lines[found_at]
    count = int(found[1])
    steps = [line for line in lines if re.match(r"INFO    \[\d+/\d+\] ", line)]
    assert [s.split("]")[0] for s in steps] == [
        f"INFO    [{i}/{count}" for i in range(1, count + 1)
    ]
    assert lines[-3] == "INFO    Verarbeitung abgeschlossen"
    outcomes = re.fullmatch(summary, lines[-2])
    assert outcomes is not None, lines[-2]
    assert int(outcomes[1]) + int(outcomes[2]) == count
    assert lines[-1] == "INFO    Job beendet"


def test_tool_without_a_filter_loads_every_plz() -> None:
    """No PLZ filter: the tool says it takes all of them."""
    code, lines = run_tool("enrich_email")
    assert code == 0
    assert "INFO    Lade Einträge für PLZ alle..." in lines


@pytest.mark.parametrize("tool", TOOLS_ON_DATEV)
def test_unreachable_datev_fails_the_tool_with_exit_code_2(tool: str) -> None:
    """PLZ filter 0 plays a DATEV that does not answer: an ERROR line and exit code 2."""
    code, lines = run_tool(tool, "--plz-filter", "0")
    assert code == 2
    assert lines[-1] == "ERROR   Verbindung zu DATEV fehlgeschlagen: Zeitüberschreitung"
    assert not any("Einträge gefunden" in line for line in lines)


@pytest.mark.parametrize("tool", ["enrich_email", "enrich_search"])
def test_dry_run_is_announced_before_anything_is_loaded(tool: str) -> None:
    """A dry run says so before the entries are loaded."""
    code, lines = run_tool(tool, "--plz-filter", "10", "--dry-run")
    assert code == 0
    warning = lines.index("WARNING Dry Run: es werden keine Änderungen gespeichert")
    assert warning < lines.index("INFO    Lade Einträge für PLZ 10*...")
