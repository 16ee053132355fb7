"""An internal job that leaves files in its output directory (artifact tests)."""

from __future__ import annotations

from jobrunner.services.runner.internal import JobContext


async def writes_files(ctx: JobContext) -> dict[str, int]:
    assert ctx.output_dir is not None
    (ctx.output_dir / "nested").mkdir()
    (ctx.output_dir / "nested" / "result.txt").write_text("from the callable")
    return {"files": 1}
