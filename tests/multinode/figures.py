"""What each cluster scenario did, collected during the run and printed as a table at its end
(``pytest_terminal_summary`` in this package's conftest), for the lead to quote."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Figure:
    scenario: str
    outcome: str  # the jobs' end, e.g. "3/3 completed"
    printed: int  # lines the tools wrote, by their own records
    stored: int  # lines in Postgres
    received: str  # lines each SSE client received, e.g. "120 x 4 clients"
    progressed_s: float | None  # fault -> jobs progressed again (a new line stored)
    election_s: float | None  # fault -> a stream leader seen again by a client
    holds: bool  # every invariant the test checks held
    note: str = ""


FIGURES: list[Figure] = []


def record(figure: Figure) -> None:
    FIGURES.append(figure)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table() -> list[str]:
    rows = [
        "| scenario | jobs | printed | stored | received | progressed s | election s | holds "
        "| note |",
        "|---|---|---:|---:|---|---:|---:|---|---|",
    ]
    for f in FIGURES:
        rows.append(
            f"| {f.scenario} | {f.outcome} | {f.printed} | {f.stored} | {f.received} "
            f"| {seconds(f.progressed_s)} | {seconds(f.election_s)} "
            f"| {'yes' if f.holds else 'NO'} | {f.note} |"
        )
    return rows
