"""`jobrunner up` starts everything, stops everything, and keeps history across restarts."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobrunner.common import cpupriority
from jobrunner.embedded.serverprocess import free_port
from tests.freeze import freeze, thaw
from tests.tools.up_process import (
    TOKEN_RE,
    URL_RE,
    Up,
    processes_using,
    run_a_job,
    services_of,
)


def services_niceness(up_pid: int) -> dict[str, set[int]]:
    """The niceness of every thread of each service."""
    return {
        name: {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}
        for name, pid in services_of(up_pid).items()
    }


def autogroup_niceness(up_pid: int) -> dict[str, int]:
    """The niceness of each service's autogroup (the CPU share of its session as a whole, see
    sched(7)); empty where the kernel has no autogroups."""
    groups = {
        name: cpupriority.autogroup_niceness(int(pid)) for name, pid in services_of(up_pid).items()
    }
    return {name: niceness for name, niceness in groups.items() if niceness is not None}


PEERS = ("runner", "projector", "notifier")
# How long the API's /metrics may go on leaving a peer out (peer_up 0) before the test fails.
PEERS_UP_WITHIN_SECONDS = 60


def scrape_metrics(client: httpx.Client) -> tuple[str, dict[tuple[str, Any], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def peers_down(samples: dict[tuple[str, Any], float]) -> list[str]:
    return [
        peer
        for peer in PEERS
        if samples.get(("jobrunner_metrics_peer_up", (("service", peer),))) != 1
    ]


def check_metrics_of_every_service(base_url: str, token: str | None) -> None:
    """The API's /metrics carries all four services, each series labelled with its service.

    A peer that does not answer the API's scrape within ``metrics_peer_timeout_seconds`` is
    left out of that answer with ``jobrunner_metrics_peer_up`` 0 (README "Metrics"): just
    after the start, on a loaded machine, the notifier (at ``background_nice``) missed the 2 s
    now and then. So the API is scraped until every peer is in one answer, and that answer is
    checked; a peer still missing after ``PEERS_UP_WITHIN_SECONDS`` fails the test."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + PEERS_UP_WITHIN_SECONDS
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        text, samples = scrape_metrics(client)
        while peers_down(samples) and time.monotonic() < deadline:
            time.sleep(0.5)
            text, samples = scrape_metrics(client)
    assert not peers_down(samples), text
    key = ("jobrunner_jobs_started_total", (("job_type", "blacklist_sync"), ("service", "runner")))
    assert samples[key] >= 1
    assert samples[("jobrunner_projector_checkpoint", (("service", "projector"),))] > 0
    services = {dict(labels)["service"] for name, labels in samples if name.startswith("process_")}
    assert services == {"api", "runner", "projector", "notifier"}


@pytest.mark.timeout(600)
def test_up_starts_serves_stops_and_keeps_history(state_dir: Path) -> None:
    """`jobrunner up` runs a job end to end, stops cleanly on Ctrl-C, and remembers it next time."""
    port = free_port()
    first = Up(state_dir, port)
    try:
        base_url = first.wait_for(URL_RE).group(1)
        token_match = TOKEN_RE.search(first.output)
        token = token_match.group(1) if token_match else None
        job_id = run_a_job(base_url, token)
        check_metrics_of_every_service(base_url, token)
        # The read models' and webhooks' services yield the cores to the runner and the API
        # (background_nice, 10 by default), in every thread they made and in their autogroup.
        own = os.getpriority(os.PRIO_PROCESS, 0)
        background = min(own + 10, 19)
        assert services_niceness(first.proc.pid) == {
            "runner": {own},
            "api": {own},
            "projector": {background},
            "notifier": {background},
        }
        groups = autogroup_niceness(first.proc.pid)
        if groups:  # each service is a session of its own, so an autogroup of its own
            assert groups["projector"] == groups["notifier"] == background, groups
            assert groups["runner"] < background, groups
            assert groups["api"] < background, groups
        assert processes_using(state_dir), "the embedded servers should be running"
    finally:
        code = first.stop(signal.SIGINT)
    assert code == 0, first.output
    assert processes_using(state_dir) == [], "Ctrl-C must stop every child, servers included"

    second = Up(state_dir, port)
    try:
        base_url = second.wait_for(URL_RE).group(1)
        assert not TOKEN_RE.search(second.output), "the admin token is printed on first start only"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
            job = client.get(f"/api/jobs/{job_id}")
        assert job.status_code == 200, job.text
        assert job.json()["status"] == "completed"
        assert job.json()["log_count"] > 0
    finally:
        code = second.stop(signal.SIGTERM)
    assert code == 0, second.output
    assert processes_using(state_dir) == []


def server_pids(path: Path) -> list[int]:
    """Live processes whose command line mentions ``path``: the servers `jobrunner up` runs."""
    return [
        int(pid)
        for pid in filter(str.isdigit, os.listdir("/proc"))
        if int(pid) != os.getpid() and mentions(int(pid), path)
    ]


def mentions(pid: int, path: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return str(path) in cmdline and state != "Z"


def children_of(parent: int) -> list[int]:
    """Live processes whose parent is ``parent``: the services `jobrunner up` supervises."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(pid))
    return found


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if mentions_anything(pid)]


def mentions_anything(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_the_servers_and_services_die_with_a_killed_up(state_dir: Path) -> None:
    """`jobrunner up` SIGKILLed (no clean-up of its own runs): the NATS server and Postgres it
    started, and its services (API, runner, projector, notifier, guardian), go with it, as a
    runner's tools do (the parent-death signal). They used to stay: the services retrying the
    dead servers for ever."""
    up = Up(state_dir, free_port())
    services: list[int] = []
    try:
        up.wait_for(URL_RE)
        servers = server_pids(state_dir)
        assert len(servers) >= 2, processes_using(state_dir)  # NATS, Postgres (and its own)
        services = [pid for pid in children_of(up.proc.pid) if pid not in servers]
        assert len(services) >= 4, services
        up.proc.kill()
        up.proc.wait(30)
        for _ in range(600):  # until they are gone, at most a minute
            if not server_pids(state_dir) and not alive(services):
                break
            time.sleep(0.1)
        assert processes_using(state_dir) == []
        assert alive(services) == []
    finally:
        for pid in server_pids(state_dir) + alive(services):  # on failure: ended here
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


WAITING_RE = re.compile(r"waiting for the projector…")
LATE_RE = re.compile(r"the projector \(pid (\d+)\) is not up after (\S+) s: its log is")
# Past the API's start, how long the test holds the projector paused before it lets it go.
HELD_PAST_THE_API = 3.0


def pause_when_started(up: Up, name: str, timeout: float = 60) -> int:
    """SIGSTOP the service ``name`` of ``up`` as soon as it runs (long before it has connected
    to NATS and Postgres: its imports alone take longer than this poll)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = services_of(up.proc.pid).get(name)
        if pid is not None:
            freeze(int(pid))
            return int(pid)
        time.sleep(0.02)
    raise AssertionError(f"no {name} started:\n{up.output}")


def start_with_the_projector_paused(
    state_dir: Path, port: int, ready_timeout: float
) -> tuple[Up, int]:
    """`up`, and its projector's pid: paused, once the API answers."""
    up = Up(state_dir, port, up_ready_timeout_seconds=str(ready_timeout))
    projector = None
    try:
        projector = pause_when_started(up, "projector")
        up.wait_for(WAITING_RE)  # the API answers: only the projector is waited for
    except BaseException:
        if projector is not None:
            stop_it(up, projector)
        else:
            up.stop(signal.SIGINT)
        raise
    return up, projector


def stop_it(up: Up, projector: int) -> None:
    thaw(projector)
    code = up.stop(signal.SIGINT)
    assert code == 0, up.output


@pytest.mark.timeout(900)
def test_running_at_comes_once_every_service_has_started(state_dir: Path) -> None:
    """On a start after the first (the read models made: the API answers without the
    projector), the projector paused from its first moment: `up` says which service it waits
    for, and not "running at" while the API alone answers. Released before
    ``up_ready_timeout_seconds``: "running at" comes after the projector's own "projector
    started", nothing called late. Still paused at that deadline: `up` names it, its pid and
    where its log is, then says "running at" all the same (a late projector is not fatal)."""
    port = free_port()
    first = Up(state_dir, port)  # makes the read models (the API waits for them)
    try:
        first.wait_for(URL_RE)
    finally:
        assert first.stop(signal.SIGINT) == 0, first.output

    released, projector = start_with_the_projector_paused(state_dir, port, 120.0)
    try:
        time.sleep(HELD_PAST_THE_API)
        assert not URL_RE.search(released.output), released.output
        thaw(projector)
        url = released.wait_for(URL_RE)
        assert released.output.index('"projector started"') < url.start(), released.output
        assert not LATE_RE.search(released.output), released.output
    finally:
        stop_it(released, projector)

    late, projector = start_with_the_projector_paused(state_dir, port, HELD_PAST_THE_API)
    try:
        match = late.wait_for(LATE_RE)
        assert int(match.group(1)) == projector
        late.wait_for(URL_RE)
        assert "projector started" not in late.output  # still paused: served all the same
    finally:
        stop_it(late, projector)
    assert processes_using(state_dir) == []


RESTARTED_WITHIN = 30.0  # well under the 60 s default of up_ready_timeout_seconds


@pytest.mark.timeout(600)
def test_a_projector_killed_during_the_start_is_restarted_at_once(state_dir: Path) -> None:
    """A service that dies while `up` waits for every service's start is restarted at once
    (the supervisor runs from the moment the API answers), not only once the wait is over
    (``up_ready_timeout_seconds``, 60 s by default)."""
    port = free_port()
    first = Up(state_dir, port)  # makes the read models (the API then answers without a projector)
    try:
        first.wait_for(URL_RE)
    finally:
        assert first.stop(signal.SIGINT) == 0, first.output

    up = Up(state_dir, port)
    try:
        deadline = time.monotonic() + 60
        killed = None
        while killed is None and time.monotonic() < deadline:
            pid = services_of(up.proc.pid).get("projector")
            if pid is not None:
                os.kill(int(pid), signal.SIGKILL)  # dies before its start is done
                killed = pid
            time.sleep(0.02)
        assert killed is not None, up.output
        killed_at = time.monotonic()
        restarted = None
        while time.monotonic() - killed_at < RESTARTED_WITHIN:
            pid = services_of(up.proc.pid).get("projector")
            if pid is not None and pid != killed:
                restarted = pid
                break
            time.sleep(0.2)
        assert restarted is not None, (
            f"the projector killed during the start was not restarted within "
            f"{RESTARTED_WITHIN:g} s:\n{up.output}"
        )
        up.wait_for(URL_RE)  # and the wait then ends with the restarted projector's start
    finally:
        assert up.stop(signal.SIGINT) == 0, up.output
