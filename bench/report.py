"""Percentiles, the results table and the JSON file."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def summarize(seconds: list[float]) -> dict[str, Any]:
    """Median, p99 and max of delays given in seconds, as milliseconds."""
    if not seconds:
        return {"n": 0, "median_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "n": len(seconds),
        "median_ms": round(percentile(seconds, 50) * 1000, 2),
        "p99_ms": round(percentile(seconds, 99) * 1000, 2),
        "max_ms": round(max(seconds) * 1000, 2),
    }


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_json(results: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "latest.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    return path


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "—"
    if isinstance(value, int | float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        return f"{text}{unit}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: measurement, result, target, limit, result / limit."""
    out = [
        "| measurement | result | target | limit (same run) | result / limit |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        verdict = row.get("met")
        mark = "" if verdict is None else (" ✅" if verdict else " ❌")
        out.append(
            f"| {row['name']} | {row['result']}{mark} | {row.get('target', '—')} "
            f"| {row.get('limit', '—')} | {row.get('ratio', '—')} |"
        )
    return "\n".join(out)


def ratio(result: float | None, limit: float | None, higher_is_better: bool = True) -> str:
    if not result or not limit:
        return "—"
    value = result / limit if higher_is_better else limit / result
    return f"{value:.0%}" if value < 10 else f"{value:.1f}x"


def markdown(results: dict[str, Any]) -> str:
    """The table with the machine and the command, for bench/RESULTS.md and the README."""
    m = results["machine"]
    return (
        f"{table(results['table'])}\n\n"
        f"Run {results['started_at']} at commit `{results['commit']}` on {m['nproc']} cores "
        f"({m['cpu']}), {m['ram_gib']} GiB RAM, Python {m['python']}, load average "
        f"{m['load_avg_at_start'][0]} at the start; the suite took {results['seconds']:.0f} s. "
        "Reproduce with `./scripts/bench` (or `.venv/bin/python -m bench`).\n"
    )


def write_markdown(results: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "latest.md"
    path.write_text(markdown(results))
    return path
