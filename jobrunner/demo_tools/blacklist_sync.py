"""Demo blacklist sync, an internal job: compares the blacklist with the spreadsheet.

``sync`` runs inside the runner (``callable = "jobrunner.demo_tools.blacklist_sync:sync"``), so it
reports through the job context instead of printing. ``python -m`` still runs it as a tool.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from jobrunner.demo_tools import datev

if TYPE_CHECKING:
    from jobrunner.services.runner.internal import JobContext


async def sync(ctx: JobContext) -> dict[str, Any]:
    ctx.log("Starte Blacklist Sync...")
    entries = datev.entries("bl", count=5)
    pace = float(ctx.env.get("JOBRUNNER_DEMO_PACE") or datev.pace())
    for i, (name, _) in enumerate(entries, 1):
        if ctx.cancel_requested:
            ctx.log("Abgebrochen", "WARNING")
            return {"checked": i - 1}
        await asyncio.sleep(pace)
        ctx.log(f"[{i}/{len(entries)}] {name} abgeglichen")
        ctx.progress(i, len(entries), phase="abgleich", message=name)
    summary = f"{len(entries)} Einträge abgeglichen, 0 entfernt"
    ctx.log(summary, "SUCCESS")
    ctx.log("Job beendet")
    return {"summary": summary, "checked": len(entries), "removed": 0}


def main() -> None:
    datev.log("INFO", "Starte Blacklist Sync...")
    entries = datev.entries("bl", count=5)
    for i, (name, _) in enumerate(entries, 1):
        datev.sleep()
        datev.progress(i, len(entries), f"{name} abgeglichen")
    datev.log("SUCCESS", f"{len(entries)} Einträge abgeglichen, 0 entfernt")
    datev.log("INFO", "Job beendet")


if __name__ == "__main__":
    main()
