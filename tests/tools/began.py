"""Knowing when a call began, so that a fault is timed from it rather than from a start."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest


def began_event(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> asyncio.Event:
    """An event set when ``owner.name`` (a coroutine function) is first called: a fault can then
    be timed from when a look or a connect began, not from when the service began starting."""
    began = asyncio.Event()
    original = getattr(owner, name)

    async def noting(*args: Any, **kwargs: Any) -> Any:
        began.set()
        return await original(*args, **kwargs)

    monkeypatch.setattr(owner, name, noting)
    return began
