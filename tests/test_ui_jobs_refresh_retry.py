"""/jobs asks again for a failed re-render of its sections (#active, #recent), backing off: the
wait doubles once per failed round (2 s, 4 s, 8 s ... 30 s), goes back to 2 s only once both
sections re-rendered, and a 4xx is not asked again. The refusals are faked in Chromium
(page.route); the page, the API and its read models are real. Bounds are generous: timers on a
loaded machine fire late, never early."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest
from playwright.async_api import Page, Request, Route, expect

from tests.system import System

pytestmark = pytest.mark.browser

RESYNC = 'document.dispatchEvent(new CustomEvent("updates-resync"))'  # re-renders both sections


def requests_to(page: Page, path: str) -> list[float]:
    """The times (event loop clock) of the page's requests for ``path``, as they are made."""
    times: list[float] = []
    loop = asyncio.get_running_loop()

    def seen(request: Request) -> None:
        if request.url.endswith(path):
            times.append(loop.time())

    page.on("request", seen)
    return times


def refusing(status: int, after: float = 0.0) -> Callable[[Route], object]:
    async def refuse(route: Route) -> None:
        await asyncio.sleep(after)
        await route.fulfill(status=status, body="refused by the test")

    return refuse


async def until(condition: Callable[[], bool], within: float = 90.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 (the page's requests are counted in a list)
            await asyncio.sleep(0.05)


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def open_jobs(page: Page) -> None:
    await page.goto("/jobs")
    await expect(page.locator("#recent")).to_be_attached()


async def test_both_sections_failing_ask_again_once_a_round(page: Page, system: System) -> None:
    """Both refused (#recent 0.3 s after #active): 2 s, 4 s, 8 s. The later failure of a round
    used to replace its 2 s retry with the doubled wait: 4.3 s, 8.3 s, 16.3 s."""
    await open_jobs(page)
    active = requests_to(page, "/ui/active")
    await page.route("**/ui/active", refusing(503))
    await page.route("**/ui/recent", refusing(503, after=0.3))
    await page.evaluate(RESYNC)
    await until(lambda: len(active) >= 4)
    first, second, third = gaps(active)[:3]
    assert first < 3.5, gaps(active)  # 2 s asked for; the next round's 4 s would be over
    assert second > 3.0, gaps(active)
    assert third > 6.0, gaps(active)
    assert first < second < third, gaps(active)


async def test_one_section_failing_backs_off_and_both_rendering_resets(
    page: Page, system: System
) -> None:
    """#recent refused, #active rendered: 2 s, 4 s (each #active success used to reset the wait:
    2 s for ever). Once both rendered, a new failure is asked again after 2 s, not 16 s."""
    await open_jobs(page)
    recent = requests_to(page, "/ui/recent")
    await page.route("**/ui/recent", refusing(503))
    await page.evaluate(RESYNC)
    await until(lambda: len(recent) >= 3)
    first, second = gaps(recent)[:2]
    assert second > 3.0, gaps(recent)
    assert first < second, gaps(recent)

    await page.unroute("**/ui/recent")  # the next retry (8 s) renders both
    async with page.expect_response(
        lambda r: r.url.endswith("/ui/recent") and r.status == 200, timeout=60_000
    ):
        pass
    await page.wait_for_timeout(2000)  # both swapped in (no timer pends after a success)
    await page.route("**/ui/recent", refusing(503))
    before = len(recent)
    await page.evaluate(RESYNC)
    await until(lambda: len(recent) >= before + 2)
    assert recent[before + 1] - recent[before] < 6.0, gaps(recent)  # 2 s asked for, not 16 s


async def test_a_4xx_is_not_asked_again(page: Page, system: System) -> None:
    """A 404 for a section gets the same answer again: no retry (one used to come every 2 s)."""
    await open_jobs(page)
    recent = requests_to(page, "/ui/recent")
    await page.route("**/ui/recent", refusing(404))
    await page.evaluate(RESYNC)
    await until(lambda: len(recent) >= 1)
    await page.wait_for_timeout(5000)  # past the 2 s retry a 503 gets, with room for load
    assert len(recent) == 1, gaps(recent)
