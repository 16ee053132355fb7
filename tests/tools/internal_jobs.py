"""Callables for internal test jobs (``callable = "tests.tools.internal_jobs:<name>"``)."""

import asyncio
import time
from typing import Any


async def counts(ctx: Any) -> dict[str, Any]:
    n = int(ctx.parameters.get("lines", 3))
    for i in range(1, n + 1):
        ctx.log(f"[{i}/{n}] item {i}")
        ctx.progress(i, n, phase="counting", message=f"item {i}")
    ctx.log("all counted", "SUCCESS")
    return {"summary": f"{n} counted", "counted": n}


async def waits_forever(ctx: Any) -> None:
    ctx.log("waiting")
    await asyncio.Event().wait()


async def ignores_cancel(ctx: Any) -> None:
    ctx.log("ignoring cancel")
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            ctx.log("cancelled at last", "WARNING")
            raise


def blocking(ctx: Any) -> dict[str, Any]:
    ctx.log("in a thread")
    while not ctx.cancel_requested:
        time.sleep(0.02)
    ctx.log("stopping as asked", "WARNING")
    return {"stopped": True}


async def raises(ctx: Any) -> None:
    ctx.log("about to fail")
    raise ValueError("spreadsheet is locked")


async def logs_hostile_text(ctx: Any) -> dict[str, Any]:
    # 3000 characters with a NUL, a control character and umlauts, on one line; then a result
    # with a NUL and a value far over the result bound.
    ctx.log("a\x00b\x01" + "ä" * 3000)
    return {"summary": "nul\x00here", "blob": "z" * 1_000_000}


async def raises_hostile(ctx: Any) -> None:
    raise ValueError("nul\x00in a " + "long " * 200_000 + "message")
