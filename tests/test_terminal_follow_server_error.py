"""``jobrunner logs --follow`` when the server answers the job's stream with an error: a 500
(a bug in the server, which no retry mends) ends the follow at once with the server's code and
sentence and exit code 70; a 502, 503 or 504 (a server starting, a proxy that lost it) is
retried until ``--reconnect-for``, then exit 69. (Before, a 500 was retried as a restart for the
whole ``--reconnect-for`` and ended "did not come back", exit 69.)"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from tests.tools.answering_server import AnsweringServer

JOB_ID = "0123456789abcdef0123456789abcdef"
BUG = {"code": "INTERNAL_ERROR", "message": "The server failed on this request."}


async def follow(url: str, reconnect_for: float, within: float = 120) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
    env["JOBRUNNER_URL"] = url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobrunner.cli",
        "logs",
        JOB_ID,
        "--follow",
        "--reconnect-for",
        str(reconnect_for),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_a_server_error_ends_the_follow_at_once_with_its_code() -> None:
    """A 500 on the stream: one request, the server's sentence and code, exit 70, no retry."""
    async with AnsweringServer(500, BUG).running() as server:
        code, err = await follow(server.url, reconnect_for=3)
    assert code == 70, err
    assert server.stream_requests == 1, err
    assert "INTERNAL_ERROR" in err
    assert "The server failed on this request." in err
    assert "did not come back" not in err


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_server_away_behind_a_proxy_is_retried_until_the_bound(status: int) -> None:
    """A 502/503/504 on the stream: retried, then "did not come back", exit 69."""
    away = {"code": "UNAVAILABLE", "message": "The server is starting."}
    async with AnsweringServer(status, away).running() as server:
        code, err = await follow(server.url, reconnect_for=2)
    assert code == 69, err
    assert server.stream_requests >= 2, err
    assert "did not come back within 2 s" in err


@pytest.mark.parametrize("then", ["silent", "headers"])
async def test_a_host_that_accepts_and_stays_silent_is_given_up_within_the_bound(
    then: str,
) -> None:
    """A 503, then a host that accepts the connection and never answers (or answers the headers
    and then nothing): the give-up comes after ``--reconnect-for``, not after the minute the
    client waits for a silent stream. (Before, only the connect was bounded by the time left:
    ``--reconnect-for 2`` exited after 61.9 s, here a TimeoutError.)"""
    away = {"code": "UNAVAILABLE", "message": "The server is starting."}
    async with AnsweringServer(503, away, then=then).running() as server:
        code, err = await follow(server.url, reconnect_for=2, within=30)
    assert code == 69, err
    assert "did not come back within 2 s" in err


async def test_a_host_that_answers_within_the_time_left_is_followed_to_the_end() -> None:
    """A 503, then the stream after a second, with two seconds of ``--reconnect-for`` left:
    the follow resumes and ends with the job (exit 0)."""
    away = {"code": "UNAVAILABLE", "message": "The server is starting."}
    async with AnsweringServer(503, away, then="stream", stream_after=1).running() as server:
        code, err = await follow(server.url, reconnect_for=4)
    assert code == 0, err
    assert "connection back after" in err


async def test_a_stream_back_is_not_lost_again_by_a_quiet_spell_longer_than_the_time_left() -> None:
    """A 503, then the stream with 3 of ``--reconnect-for``'s 4 s left, whose job then says
    nothing for 5 s (under the minute a silent stream is given): the follow goes on to the
    job's end, exit 0, and tells no second loss. The wait for the stream's headers, bounded by
    the time left, must not bound the quiet of a stream that is back."""
    away = {"code": "UNAVAILABLE", "message": "The server is starting."}
    server = AnsweringServer(503, away, then="stream", stream_after=1, done_after=5)
    async with server.running():
        code, err = await follow(server.url, reconnect_for=4)
    assert code == 0, err
    assert err.count("lost") == 1, err
    assert "connection back after" in err
    # The 503, then the stream back read to its end on its connection (before: taken up again
    # quietly on a third once its quiet outlasted the time left, the read bound of the
    # connection made while lost).
    assert server.stream_requests == 2, err


async def test_too_many_streams_while_reconnecting_is_retried_like_a_server_away() -> None:
    """A 503, then 429 TOO_MANY_STREAMS (the lost stream still counted by the server), then the
    stream: the follow goes on to the job's end, exit 0. (Before, the 429 ended it, exit 2.)"""
    away = {"code": "TOO_MANY_STREAMS", "message": "Too many streams are open."}
    async with AnsweringServer((503, 429), away, then="stream").running() as server:
        code, err = await follow(server.url, reconnect_for=10)
    assert code == 0, err
    assert server.stream_requests == 3, err
