"""A webhook attempt's answer deadline (``webhook_timeout_seconds``, ``notifier.sender``) counts
the notifier loop's own time (``common.looptime``), on asyncio's loop and on uvloop: a receiver
answering just before the deadline is delivered, just after it is ``WEBHOOK_TIMEOUT``; an answer
that came while the loop was blocked 0.8 or 1.25 times the deadline by other work is delivered
(before session 40, on wall time, 1.25 times was a ``WEBHOOK_TIMEOUT`` and a needless retry);
and a receiver that never answers (silent, or dripping its answer's head so that no read waits
long) is given up after at most twice the deadline of wall time however often the loop is
held."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from jobrunner.common.looptime import MOST_BOUNDS
from jobrunner.services.notifier.addresses import AddressPolicy
from jobrunner.services.notifier.sender import AttemptResult, Sender
from tests.tools.event_loops import LOOPS, run_on
from tests.tools.held_loop import loop_held_again_and_again
from tests.tools.reader_block import reader_block
from tests.tools.stranger_server import stranger_on

pytestmark = pytest.mark.timeout(120)

DEADLINE = 0.5  # webhook_timeout_seconds
CONNECT = 5.0  # webhook_connect_timeout_seconds: not the one under test
LOOPBACK = AddressPolicy.parse("127.0.0.1")


@contextmanager
def receiver(
    before_answer: Callable[[], None] = lambda: None,
    after_answer: Callable[[], None] = lambda: None,
    head_trickle: float = 0.0,
) -> Iterator[str]:
    """A webhook receiver in a thread of its own (a receiver on the notifier's loop would be
    held with it), answering 200: its URL."""
    with stranger_on(
        0,
        200,
        b"ok",
        before_answer=before_answer,
        after_answer=after_answer,
        head_trickle=head_trickle,
    ) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"


async def _post(url: str) -> AttemptResult:
    sender = Sender(LOOPBACK, CONNECT, DEADLINE)
    try:
        return await sender.post(url, {"Content-Type": "application/json"}, b"{}")
    finally:
        await sender.close()


async def _post_answered_after(answer_after: float) -> AttemptResult:
    with receiver(before_answer=lambda: time.sleep(answer_after)) as url:
        return await _post(url)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_receiver_answering_just_before_the_deadline_is_delivered(loop: str) -> None:
    """The receiver answers 0.7 times ``webhook_timeout_seconds`` after the request: 200."""
    result = run_on(loop, _post_answered_after(0.7 * DEADLINE))
    assert result.delivered, result
    assert result.status_code == 200


@pytest.mark.parametrize("loop", LOOPS)
def test_a_receiver_answering_just_after_the_deadline_times_out(loop: str) -> None:
    """The receiver answers 1.5 times ``webhook_timeout_seconds`` after the request:
    ``WEBHOOK_TIMEOUT``, retried."""
    result = run_on(loop, _post_answered_after(1.5 * DEADLINE))
    assert result.error_code == "WEBHOOK_TIMEOUT", result
    assert result.retryable


async def _post_with_the_loop_blocked_while_answered(blocked: float) -> AttemptResult:
    """A POST whose receiver, once it has read the request, has the notifier's loop blocked
    (inside an I/O callback) ``blocked`` seconds and answers meanwhile: the answer waits in
    the socket by the block's end."""
    with reader_block() as block:
        blocking = threading.Event()
        answered = threading.Event()

        def block_the_loop() -> None:  # in the receiver's thread
            def block_until_answered() -> None:
                blocking.set()
                time.sleep(blocked)
                answered.wait(60)  # a bound on a broken test only

            block.at_next_poll(block_until_answered)
            blocking.wait(60)

        with receiver(before_answer=block_the_loop, after_answer=answered.set) as url:
            return await _post(url)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("blocked", [0.8, 1.25], ids=["shorter", "longer"])
def test_an_answer_that_came_while_the_notifier_loop_was_blocked_is_delivered(
    loop: str, blocked: float
) -> None:
    """The notifier's loop blocked 0.8 or 1.25 times the deadline while the receiver answered
    200 at once: delivered, not ``WEBHOOK_TIMEOUT``. Both pass because only the time the loop
    was free counts; on wall time 1.25 times timed out."""
    result = run_on(loop, _post_with_the_loop_blocked_while_answered(blocked * DEADLINE))
    assert result.delivered, result


HOLD = 0.3  # each hold of the loop by its other work, again and again
FREE = 0.05  # the loop's free time between two holds
# A bound on the machine's own slowness, not a timing of the code: without the wall-time
# backstop the dripping receiver's attempt takes about 20 slices of (FREE + HOLD), 7 s.
LATE = 2.5
# Holds the attempt may meet past its deadline: the one under way, and one in the close of its
# connection.
HOLDS_AFTER = 2
DRIP = 0.02  # a byte of a never-ending answer every this long: far under httpx's read timeout
HANG_GUARD = 30.0  # a bound on a broken test only


async def _post_with_the_loop_held_again_and_again(
    head_trickle: float,
) -> tuple[float, AttemptResult]:
    """The seconds from the request's arrival until the attempt gave up, the loop held ``HOLD``
    every ``FREE`` seconds, and the attempt's result: to a receiver that never answers
    (``head_trickle`` 0), or that sends its answer's head a byte every ``head_trickle``
    seconds and never ends it."""
    asked_at: list[float] = []
    ending = threading.Event()

    def take_the_request() -> None:
        asked_at.append(time.monotonic())
        if not head_trickle:
            ending.wait(60)  # a bound on a broken test only

    try:
        with receiver(before_answer=take_the_request, head_trickle=head_trickle) as url:
            with loop_held_again_and_again(HOLD, FREE):
                result = await asyncio.wait_for(_post(url), HANG_GUARD)
            return time.monotonic() - asked_at[0], result
    finally:
        ending.set()


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("head_trickle", [0.0, DRIP], ids=["silent", "dripping"])
def test_a_receiver_that_never_answers_is_given_up_within_twice_the_deadline_however_busy_the_loop(
    loop: str, head_trickle: float
) -> None:
    """A receiver that never answers, silent or dripping its answer's head a byte every 20 ms
    (so no read of it ever waits long), the notifier's loop held by other work again and
    again (no slice of its own time counted): the attempt still ends ``WEBHOOK_TIMEOUT`` after
    at most twice the deadline of wall time (plus the holds under way). The dripping one is
    ended by the deadline's wall-time backstop alone (without it: 7 s, measured)."""
    took, result = run_on(loop, _post_with_the_loop_held_again_and_again(head_trickle))
    assert result.error_code == "WEBHOOK_TIMEOUT", result
    assert took < MOST_BOUNDS * DEADLINE + HOLDS_AFTER * HOLD + LATE
