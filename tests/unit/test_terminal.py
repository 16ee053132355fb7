"""The terminal client's pure parts: typed -p values, the SSE parser, exit codes, the server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from jobrunner.terminal.commands import exit_code_of
from jobrunner.terminal.connection import ClientError, find_target
from jobrunner.terminal.follow import CONNECT_SECONDS, Follower, sse_events
from jobrunner.terminal.parameters import parse_parameters

TYPE: dict[str, Any] = {
    "name": "scan",
    "parameters": {
        "count": {"type": "integer"},
        "headless": {"type": "bool"},
        "mode": {"type": "enum"},
        "tags": {"type": "multi_enum"},
        "text": {"type": "string"},
    },
}


def test_values_are_typed_by_the_job_type() -> None:
    """-p count=5 is a number, headless=no a boolean, a repeated multi-choice a list."""
    assert parse_parameters(
        TYPE,
        ["count=5", "headless=no", "mode=fast", "tags=a", "tags=b", "text=x=y"],
    ) == {"count": 5, "headless": False, "mode": "fast", "tags": ["a", "b"], "text": "x=y"}


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("count", "NAME=VALUE"),
        ("=3", "NAME=VALUE"),
        ("count=five", "not a whole number"),
        ("headless=maybe", "not yes/no"),
        ("colour=red", "no parameter 'colour'"),
    ],
)
def test_a_bad_pair_is_one_sentence(pair: str, message: str) -> None:
    """Each malformed -p says what is wrong with it."""
    with pytest.raises(ClientError, match=message):
        parse_parameters(TYPE, [pair])


def test_a_single_value_parameter_given_twice_is_refused() -> None:
    """Only a multi-choice parameter may repeat."""
    with pytest.raises(ClientError, match="given twice"):
        parse_parameters(TYPE, ["mode=a", "mode=b"])


@settings(deadline=None, max_examples=200)
@given(st.lists(st.text(max_size=30), max_size=6))
def test_any_arguments_give_parameters_or_a_sentence(pairs: list[str]) -> None:
    """Whatever is typed after -p, the result is parameters or a ClientError, nothing else."""
    message = ""
    try:
        parse_parameters(TYPE, pairs)
    except ClientError as exc:
        message = str(exc)
        assert message


def test_sse_events_are_parsed_with_ids_and_multiline_data() -> None:
    """Comments, retry lines and blank keep-alives are skipped; data lines are joined."""
    stream = [
        "retry: 3000",
        "",
        ": keep-alive",
        "",
        "id: 7:0",
        'data: {"seq": 1}',
        "",
        "event: done",
        "data: {",
        'data: "status": "completed"}',
        "",
    ]
    events = list(sse_events(iter(stream)))
    assert [(e.event, e.id) for e in events] == [("message", "7:0"), ("done", None)]
    assert json.loads(events[1].data) == {"status": "completed"}


@pytest.mark.parametrize(
    ("job", "code"),
    [
        ({"status": "completed"}, 0),
        ({"status": "failed", "exit_code": 3}, 3),
        ({"status": "failed", "exit_code": None}, 75),
        ({"status": "failed", "exit_code": -9}, 75),
        ({"status": "cancelled", "exit_code": -15}, 130),
    ],
)
def test_exit_codes_follow_the_job_outcome(job: dict[str, Any], code: int) -> None:
    """0 completed, the tool's code when it has one, 75 failed without one, 130 cancelled."""
    assert exit_code_of(job) == code


def test_the_server_comes_from_the_flag_then_env_then_state_dir(tmp_path: Path) -> None:
    """--url wins over JOBRUNNER_URL, which wins over a running `jobrunner up`'s runtime.json."""
    (tmp_path / "runtime.json").write_text(json.dumps({"api_url": "http://0.0.0.0:8123"}))
    env = {"JOBRUNNER_URL": "http://env:1/", "JOBRUNNER_TOKEN": "t"}
    assert find_target("http://flag:2/", None, str(tmp_path), env).url == "http://flag:2"
    assert find_target(None, None, str(tmp_path), env).url == "http://env:1"
    found = find_target(None, None, str(tmp_path), {"JOBRUNNER_TOKEN": "t"})
    assert found.url == "http://127.0.0.1:8123"
    assert found.token == "t"


def test_no_server_anywhere_says_what_to_pass(tmp_path: Path) -> None:
    """Without --url, JOBRUNNER_URL or a runtime.json the sentence names all three."""
    with pytest.raises(ClientError, match=r"pass --url.*JOBRUNNER_URL.*runtime\.json"):
        find_target(None, None, str(tmp_path), {})


@settings(max_examples=100)
@given(
    reconnect_for=st.floats(min_value=0.5, max_value=600),
    lost_ago=st.floats(min_value=0, max_value=700),
)
def test_a_connect_while_the_stream_is_lost_waits_at_most_the_time_left(
    reconnect_for: float, lost_ago: float
) -> None:
    """`logs --follow --reconnect-for N`: a connect attempt never outlasts the time left of N
    (it took 30 s whatever was left, so a 2 s bound could give up 30 s late)."""
    follower = Follower(
        api=None,  # type: ignore[arg-type]  # a connect's bound reads no connection
        job_id="x",
        console=Console(),
        reconnect_for=reconnect_for,
    )
    assert follower._connect_seconds() == CONNECT_SECONDS  # not lost: an ordinary connect
    follower._lost_since = time.monotonic() - lost_ago
    left = reconnect_for - lost_ago
    assert 0.1 <= follower._connect_seconds() <= max(0.1, min(CONNECT_SECONDS, left))
