"""What `jobrunner up` checks before starting anything: each problem is one sentence."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from jobrunner.cli import build_parser
from jobrunner.common.jobtypes import JobType
from jobrunner.common.settings import SettingsError
from jobrunner.preflight import (
    STATE_FILE,
    STATE_FORMAT,
    check_port_free,
    check_state_dir,
    missing_tools,
)


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--config", "x.toml"],
        ["--config", "x.toml", "up"],
        ["token", "list", "--config", "x.toml"],
        ["replay", "--config", "x.toml"],
    ],
)
def test_config_is_accepted_before_and_after_the_command(argv: list[str]) -> None:
    """`jobrunner up --config FILE` works as the README shows, as does the form before `up`."""
    assert build_parser().parse_args(argv).config == "x.toml"


def test_config_given_before_the_command_is_not_reset_by_it() -> None:
    """A command without --config keeps the one given before it (and None stays None)."""
    assert build_parser().parse_args(["--config", "y.toml", "up", "--port", "1"]).config == "y.toml"
    assert build_parser().parse_args(["up"]).config is None


def test_a_port_in_use_is_one_sentence_naming_it() -> None:
    """A busy port stops the start with the port, the address and what to do."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(SettingsError, match=rf"port {port} on 127.0.0.1 is already in use"):
            check_port_free("127.0.0.1", port)


def test_a_free_port_passes() -> None:
    """A port nobody listens on passes the check (and is free again afterwards)."""
    with socket.socket() as finder:
        finder.bind(("127.0.0.1", 0))
        port = finder.getsockname()[1]
    check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)


def test_an_address_of_another_machine_is_refused() -> None:
    """--host with an address this machine does not have says so."""
    with pytest.raises(SettingsError, match="no address of this machine"):
        check_port_free("192.0.2.1", 8000)  # TEST-NET-1: never a local address


def test_a_new_state_dir_is_marked_with_its_format(tmp_path: Path) -> None:
    """The first start writes the state format, so a later, older jobrunner can refuse it."""
    state = tmp_path / "state"
    check_state_dir(state, "1.2.3")
    written = json.loads((state / STATE_FILE).read_text())
    assert written == {"state_format": STATE_FORMAT, "jobrunner": "1.2.3"}


def test_a_state_dir_from_a_newer_jobrunner_is_refused(tmp_path: Path) -> None:
    """A state directory written by a newer version names that version and what to do."""
    (tmp_path / STATE_FILE).write_text(
        json.dumps({"state_format": STATE_FORMAT + 1, "jobrunner": "9.0.0"})
    )
    with pytest.raises(SettingsError, match=r"newer jobrunner \(9\.0\.0.*choose another"):
        check_state_dir(tmp_path, "0.1.0")


def test_a_damaged_state_marker_is_one_sentence(tmp_path: Path) -> None:
    """A marker that is no JSON says which file and what to do, never a traceback."""
    (tmp_path / STATE_FILE).write_text("{nope")
    with pytest.raises(SettingsError, match=r"is damaged"):
        check_state_dir(tmp_path, "0.1.0")


def test_a_state_dir_that_cannot_be_created_says_so(tmp_path: Path) -> None:
    """A state directory below a file cannot be created: the sentence names it."""
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsError, match="cannot create the state directory"):
        check_state_dir(tmp_path / "file" / "state", "0.1.0")


def test_a_missing_tool_is_named_with_its_job_type() -> None:
    """A job type whose program is not installed is reported by name; the others pass."""
    types = {
        "gone": JobType(name="gone", argv=["no-such-program-xyz", "--flag"]),
        "abs": JobType(name="abs", argv=["/no/such/dir/tool"]),
        "here": JobType(name="here", argv=["sh", "-c", "true"]),
        "py": JobType(name="py", argv=["{python}", "-m", "x"]),
        "call": JobType(name="call", callable="a.b:c"),
    }
    problems = missing_tools(types)
    assert len(problems) == 2
    assert "'gone'" in problems[0]
    assert "'no-such-program-xyz'" in problems[0]
    assert "on PATH" in problems[0]
    assert "'abs'" in problems[1]
    assert "SPAWN_FAILED" in problems[1]
