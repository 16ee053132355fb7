"""What each fault did to its job, collected during the run and printed as a table at its end
(``pytest_terminal_summary`` in this package's conftest)."""

from __future__ import annotations

from dataclasses import dataclass


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


FIGURES: list[Figure] = []


def record(figure: Figure) -> None:
    FIGURES.append(figure)


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
