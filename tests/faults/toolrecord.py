"""What the fault-suite tool (tools/numbered.py) recorded of its own run, read back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ToolRun:
    """What the tool itself recorded: when it ran and which lines it wrote to stdout."""

    pid: int | None
    started: float | None
    ended: float | None
    how: str | None
    lines: list[str]
    last_line_at: float | None

    @property
    def active_until(self) -> float | None:
        """When it last did anything: its end, or (killed without a word) its last line."""
        return self.ended or self.last_line_at or self.started


@dataclass
class ToolJob:
    id: str
    label: str
    record: Path

    def run(self) -> ToolRun:
        pid = started = ended = last = None
        how = None
        lines: list[str] = []
        text = self.record.read_text() if self.record.exists() else ""
        for fact in text.splitlines():
            parts = fact.split()
            if parts[0] == "start" and len(parts) == 3:
                started, pid = float(parts[1]), int(parts[2])
            elif parts[0] == "line" and len(parts) == 3:
                lines.append(f"{self.label} line {parts[1]}")
                last = float(parts[2])
            elif parts[0] == "end" and len(parts) == 3:
                ended, how = float(parts[1]), parts[2]
        return ToolRun(pid, started, ended, how, lines, last)
