"""Addresses the API hands out for a job's artifacts (in JSON and on the job's page)."""

from __future__ import annotations

from urllib.parse import quote


def artifact_url(job_id: str, name: str) -> str:
    return f"/api/jobs/{quote(job_id, safe='')}/artifacts/{quote(name, safe='/')}"


def archive_url(job_id: str) -> str:
    return f"/api/jobs/{quote(job_id, safe='')}/download-archive"


def size_text(size: int, lang: str) -> str:
    """``1.5 MiB`` (``1,5 MiB`` in German): binary units, one decimal above bytes."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{size} B"
    text = f"{value:.1f}"
    return f"{text.replace('.', ',') if lang == 'de' else text} {unit}"
