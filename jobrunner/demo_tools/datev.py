"""Fake DATEV data and the log format shared by the demo tools."""

from __future__ import annotations

import os
import random
import sys
import time

_SURNAMES = [
    "Mustermann",
    "Beispiel",
    "Schmidt",
    "Müller",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Koch",
    "Richter",
    "Klein",
]
_FIRST = ["Stefan", "Anna", "Thomas", "Julia", "Michael", "Laura", "Andreas", "Sabine"]
_FIRMS = ["GmbH", "Partner mbB", "& Kollegen", "Steuerberatung"]


def pace() -> float:
    try:
        return max(0.0, float(os.environ.get("JOBRUNNER_DEMO_PACE", "0.4")))
    except ValueError:
        return 0.4


def log(level: str, message: str) -> None:
    # Real tools print "LEVEL  message"; jobrunner adds the timestamp itself.
    print(f"{level:<7} {message}", flush=True)


def progress(i: int, total: int, message: str) -> None:
    print(f"INFO    [{i}/{total}] {message}", flush=True)


def entries(plz_filter: str, count: int | None = None) -> list[tuple[str, str]]:
    """Deterministic fake tax advisors for a PLZ prefix: (name, plz)."""
    rng = random.Random(f"datev-{plz_filter}")
    n = count if count is not None else rng.randint(40, 80)
    out = []
    for _ in range(n):
        if rng.random() < 0.3:
            name = f"{rng.choice(_SURNAMES)} {rng.choice(_FIRMS)}"
        else:
            name = f"{rng.choice(_SURNAMES)}, {rng.choice(_FIRST)}"
        plz = (plz_filter + "".join(str(rng.randint(0, 9)) for _ in range(5)))[:5]
        out.append((name, plz))
    return out


def fail_if_unreachable(plz_filter: str) -> None:
    if plz_filter == "0":
        log("ERROR", "Verbindung zu DATEV fehlgeschlagen: Zeitüberschreitung")
        sys.exit(2)


def load_entries(plz_filter: str, announcement: str) -> list[tuple[str, str]]:
    """The entries of ``plz_filter`` as every tool loads them: DATEV reached first (exit 2 if
    not), then ``announcement`` with the PLZ, then how many were found."""
    fail_if_unreachable(plz_filter)
    plz = f"{plz_filter}*" if plz_filter else "alle"
    log("INFO", f"{announcement} für PLZ {plz}...")
    found = entries(plz_filter)
    log("INFO", f"{len(found)} Einträge gefunden")
    return found


def warn_if_dry_run(dry_run: bool) -> None:
    if dry_run:
        log("WARNING", "Dry Run: es werden keine Änderungen gespeichert")


def finish(summary: str) -> None:
    """The last lines of every tool: the work done, its ``summary``, the end."""
    log("INFO", "Verarbeitung abgeschlossen")
    log("SUCCESS", summary)
    log("INFO", "Job beendet")


def sleep() -> None:
    time.sleep(pace())
