"""The terminal client against a real server: start, follow, list, read logs and cancel jobs from
a shell, with exit codes a script can act on."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.terminal_client import client_env, finish, jobrunner, start_client


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, auth=True)


async def test_submit_follow_prints_every_line_and_exits_zero(system: System) -> None:
    """`jobrunner submit emit -p lines=3 --follow` shows the lines and ends with exit code 0."""
    run = await jobrunner(system, "submit", "emit", "-p", "lines=3", "--follow")
    assert run.code == 0, run.err
    assert re.findall(r"line \d \[\d/3\]", run.out) == [
        "line 1 [1/3]",
        "line 2 [2/3]",
        "line 3 [3/3]",
    ]
    assert "job completed" in run.err


async def test_a_failing_tool_exit_code_is_the_client_exit_code(system: System) -> None:
    """A tool that exits 3 makes `submit --follow` exit 3, with the error on stderr."""
    run = await jobrunner(system, "submit", "emit", "-p", "lines=1", "-p", "exit_code=3", "-f")
    assert run.code == 3, run.err
    assert "job failed, exit code 3" in run.err


async def test_submit_without_follow_prints_the_job_id(system: System) -> None:
    """Without --follow the job id is the only line on stdout, for scripts."""
    run = await jobrunner(system, "submit", "emit", "-p", "lines=1")
    assert run.code == 0, run.err
    job_id = run.out.strip()
    async with system.client() as client:
        assert (await client.get(f"/api/jobs/{job_id}")).status_code == 200


async def test_an_unknown_parameter_is_one_sentence_naming_the_known_ones(system: System) -> None:
    """-p with a name the type lacks fails before anything starts, listing the parameters."""
    run = await jobrunner(system, "submit", "emit", "-p", "colour=red")
    assert run.code == 2
    assert "no parameter 'colour'" in run.err
    assert "lines" in run.err
    assert "Traceback" not in run.err


async def test_a_value_the_server_refuses_is_its_sentence_and_code(system: System) -> None:
    """A number out of the type's range is refused by the server; the client says why, naming
    the parameter and its problem (not only "Some parameters are not valid")."""
    run = await jobrunner(system, "submit", "emit", "-p", "exit_code=999")
    assert run.code == 2
    assert "INVALID_PARAMETERS" in run.err
    assert "parameters.exit_code: " in run.err
    assert "(OUT_OF_RANGE)" in run.err


async def test_without_a_token_the_client_says_how_to_get_one(system: System) -> None:
    """No token: the 401 comes with what to do (--token, JOBRUNNER_TOKEN, token create)."""
    run = await jobrunner(system, "jobs", token=None)
    assert run.code == 2
    assert "JOBRUNNER_TOKEN" in run.err
    assert "jobrunner token create" in run.err


async def test_no_server_at_the_address_is_exit_69(system: System) -> None:
    """A URL nobody answers on says it cannot reach jobrunner, with exit code 69."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobrunner.cli",
        "jobs",
        "--url",
        "http://127.0.0.1:9",
        env=client_env(system, system.admin_token),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    run = await finish(proc)
    assert run.code == 69
    assert "cannot reach jobrunner at http://127.0.0.1:9" in run.err


async def test_an_address_without_http_says_how_to_write_it(system: System) -> None:
    """`--url 127.0.0.1:PORT` (or JOBRUNNER_URL so), as a browser's address bar takes it, is a
    bad argument (exit 2) naming the address to write, not "cannot reach jobrunner" (69) while
    the server runs there; written so, the same address lists the jobs."""
    host_port = system.base_url.split("://", 1)[1]
    run = await jobrunner(system, "jobs", "--url", host_port)
    assert run.code == 2, run.err
    assert f"write it as http://{host_port}" in run.err
    assert "cannot reach" not in run.err
    fixed = await jobrunner(system, "jobs", "--url", f"http://{host_port}")
    assert fixed.code == 0, fixed.err


async def test_follow_resumes_after_the_server_drops_the_connection(system: System) -> None:
    """The API restarting mid-follow loses no line and repeats none: Last-Event-ID resumes."""
    follower = await start_client(
        system, "submit", "emit", "-p", "lines=60", "-p", "interval=0.05", "--follow"
    )
    assert follower.stdout is not None
    first = await asyncio.wait_for(follower.stdout.readline(), 30)
    assert b"line 1 [1/60]" in first
    await system.stop_api()
    await asyncio.sleep(0.5)
    await system.start_api()
    run = await finish(follower)
    assert run.code == 0, run.err
    numbers = [
        int(ln.split("line ", 1)[1].split(" ", 1)[0])
        for ln in (first.decode() + run.out).splitlines()
        if "line " in ln
    ]
    assert numbers == list(range(1, 61))


async def test_jobs_show_logs_and_cancel(system: System) -> None:
    """A job started elsewhere is listed, shown, its log tail read, and cancelled from a shell."""
    async with system.client() as client:
        created = await client.post(
            "/api/jobs",
            json={"job_type": "emit", "parameters": {"lines": 100000, "interval": "0.01"}},
        )
        job_id = created.json()["id"]
        async with asyncio.timeout(30):
            while True:
                if (await client.get(f"/api/jobs/{job_id}")).json()["log_count"] >= 5:
                    break
                await asyncio.sleep(0.05)
    listed = await jobrunner(system, "jobs", "--status", "running")
    assert job_id in listed.out
    shown = await jobrunner(system, "show", job_id)
    assert "running" in shown.out
    tail = await jobrunner(system, "logs", job_id, "--tail", "2")
    assert len([ln for ln in tail.out.splitlines() if "line" in ln]) == 2
    following = await start_client(system, "logs", job_id, "--follow")
    cancelled = await jobrunner(system, "cancel", job_id)
    assert cancelled.code == 0, cancelled.err
    assert "cancel requested" in cancelled.out
    ended = await finish(following)
    assert ended.code == 130
    assert "job cancelled" in ended.err


async def test_interrupting_a_follow_leaves_the_job_running(system: System) -> None:
    """Ctrl-C without a terminal to ask on stops following only; the job goes on."""
    follower = await start_client(
        system, "submit", "emit", "-p", "lines=100000", "-p", "interval=0.02", "--follow"
    )
    assert follower.stdout is not None
    await asyncio.wait_for(follower.stdout.readline(), 30)
    follower.send_signal(signal.SIGINT)
    run = await finish(follower)
    assert run.code == 130
    assert "stopped following" in run.err
    job_id = run.err.split("job ", 1)[1].split(" ", 1)[0]
    async with system.client() as client:
        assert (await client.get(f"/api/jobs/{job_id}")).json()["status"] == "running"
