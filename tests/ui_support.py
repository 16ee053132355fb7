"""Helpers the web UI tests share: their job types and waiting for a job through the API."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test's settings with the test job types (``TEST_TYPES``): a module that imports this
    fixture runs its system with them."""
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


TERMINAL = {"completed", "failed", "cancelled"}


async def start_job(system: System, job_type: str, **parameters: Any) -> str:
    async with system.client() as client:
        created = await client.post(
            "/api/jobs", json={"job_type": job_type, "parameters": parameters}
        )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def wait_for_status(system: System, job_id: str, statuses: set[str]) -> dict[str, Any]:
    """Poll the job until its status is one of ``statuses`` (30 s at most)."""
    async with system.client() as client, asyncio.timeout(30):
        while True:
            job = (await client.get(f"/api/jobs/{job_id}")).json()
            if job["status"] in statuses:
                return dict(job)
            await asyncio.sleep(0.05)


async def cancel_job(system: System, job_id: str) -> None:
    async with system.client() as client:
        await client.delete(f"/api/jobs/{job_id}")


# Every visible element with its own text: the WCAG contrast ratio of its colour against the
# background it is drawn on (colours resolved by a canvas, so any CSS colour space works).
LOW_CONTRAST = """() => {
  const ctx = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
  const rgba = (css) => {
    ctx.clearRect(0, 0, 1, 1);
    ctx.fillStyle = "#000";
    ctx.fillStyle = css;
    ctx.fillRect(0, 0, 1, 1);
    const [r, g, b, a] = ctx.getImageData(0, 0, 1, 1).data;
    return [r, g, b, a / 255];
  };
  const over = (top, under) => top.slice(0, 3).map((c, i) => c * top[3] + under[i] * (1 - top[3]));
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) { layers.push(c); if (c[3] === 1) break; }
    }
    return layers.reverse().reduce((under, top) => over(top, under), [255, 255, 255]);
  };
  const lum = (rgb) => {
    const [r, g, b] = rgb.map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const bad = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const unseen = "[hidden], dialog:not([open]), .sr-only, template";
    if (!own || !el.getClientRects().length || el.closest(unseen)) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden") continue;
    let opacity = 1;
    for (let e = el; e; e = e.parentElement) opacity *= Number(getComputedStyle(e).opacity);
    const bg = background(el);
    const fg = rgba(style.color);
    const text = over([...fg.slice(0, 3), fg[3] * opacity], bg);
    const [l1, l2] = [lum(text), lum(bg)].sort((a, b) => b - a);
    const ratio = (l1 + 0.05) / (l2 + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      bad.push(`${ratio.toFixed(2)} ${el.tagName}.${el.className} ${el.textContent.trim()}`);
    }
  }
  return bad;
}"""
