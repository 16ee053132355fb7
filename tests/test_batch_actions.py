"""Acting on batches: restart, pending, fail, archive, against real NATS, Postgres and a runner."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.services.api import attempt_rows
from tests.batch_actions_support import ReadModel, counters, real_counts, submit_through
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, status_events, wait_dead, wait_file


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease TTL long enough that a loaded test machine never lets a live lease lapse.
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=6.0)


def emit(exit_code: int = 0, lines: int = 2, interval: str = "0") -> tuple[str, dict[str, object]]:
    return ("emit", {"lines": lines, "exit_code": exit_code, "interval": interval})


async def pids_of(pidfile: Path) -> tuple[int, int]:
    tool, grandchild = (await wait_file(pidfile)).split()
    return int(tool), int(grandchild)


async def test_restart_runs_every_ended_job_again_as_a_new_attempt(
    settings: Settings, system: System
) -> None:
    """After restart each job has a second attempt that ran; the batch counts the new ones."""
    batch_id, job_ids = await submit_through(system.client, [emit(), emit(exit_code=3), emit()])
    async with ReadModel(settings) as rm, system.client() as client:
        await rm.wait_ended(batch_id, 3)
        response = await client.post(f"/api/batches/{batch_id}/restart")
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["batch_id"], body["action"], body["jobs"]) == (batch_id, "restart", job_ids)
        assert len(set(body["attempts"])) == 3
        batch, jobs = await rm.wait_batch(
            batch_id,
            lambda b, js: (
                [j["id"] for j in js] == body["attempts"]
                and all(j["status"] in ("completed", "failed") for j in js)
            ),
        )
    assert [(j["attempt"], j["attempt_of"]) for j in jobs] == [(2, root) for root in job_ids]
    assert [j["status"] for j in jobs] == ["completed", "failed", "completed"]
    assert counters(batch) == (0, 0, 2, 1, 0)
    assert batch["status"] == "failed"


async def test_restart_while_a_job_runs_cancels_it_and_runs_a_new_attempt_after_it(
    settings: Settings, system: System, tmp_path: Path
) -> None:
    """A running job is cancelled (its process group ends) and its new attempt runs after it."""
    pidfile, starts = tmp_path / "pids", tmp_path / "starts"
    batch_id, (running_id, _done_id) = await submit_through(
        system.client,
        [("family", {"pidfile": str(pidfile), "count_file": str(starts)}), emit()],
    )
    async with ReadModel(settings) as rm, system.client() as client:
        await rm.wait_batch(batch_id, lambda b, js: js[1]["status"] == "completed")
        tool, grandchild = await pids_of(pidfile)
        pidfile.unlink()
        response = await client.post(f"/api/batches/{batch_id}/restart", json={"reason": "again"})
        assert response.status_code == 202, response.text
        new_running, _ = response.json()["attempts"]
        old = await _wait_job(rm, running_id, "cancelled")
        await wait_dead(tool)
        await wait_dead(grandchild)
        new_tool, _ = await pids_of(pidfile)  # the new attempt's tool started
        new = await _wait_job(rm, new_running, "running")
        # The other job's new attempt may still be on its way to completed (a loaded machine).
        await rm.wait_batch(batch_id, lambda b, js: counters(b) == (0, 1, 1, 0, 0))
        assert new["started_at"] >= old["finished_at"]
        assert old["cancelled_by"] == "test-admin"
        stop = await client.post(f"/api/batches/{batch_id}/fail")
        assert stop.status_code == 202, stop.text
        await _wait_job(rm, new_running, "cancelled")
        await wait_dead(new_tool)
    assert len(starts.read_text().split()) == 2
    assert await status_events(settings, running_id) == ["running", "cancelled"]


async def test_restarted_locked_jobs_take_their_lock_in_batch_order(
    settings: Settings, system: System, tmp_path: Path
) -> None:
    """The new attempts of a batch's locked jobs run one at a time, in batch order."""
    lockfile, order = tmp_path / "lock", tmp_path / "order"
    jobs = [
        (
            "queued",
            {
                "lockfile": str(lockfile),
                "order_file": str(order),
                "label": f"j{i}",
                "seconds": "0.1",
            },
        )
        for i in range(5)
    ]
    batch_id, _ = await submit_through(system.client, jobs)
    async with ReadModel(settings) as rm, system.client() as client:
        await rm.wait_ended(batch_id, 5)
        order.write_text("")
        response = await client.post(f"/api/batches/{batch_id}/restart")
        assert response.status_code == 202, response.text
        batch, _latest = await rm.wait_batch(
            batch_id,
            lambda b, js: all(j["attempt"] == 2 and j["status"] == "completed" for j in js),
        )
    assert order.read_text().split() == [f"j{i}" for i in range(5)]
    assert counters(batch) == (0, 0, 5, 0, 0)


async def test_fail_cancels_pending_and_running_jobs_and_the_batch_ends_failed(
    settings: Settings, system: System, tmp_path: Path
) -> None:
    """Fail: queued jobs never start, the running one's process group is gone, reason kept."""
    starts = tmp_path / "starts"
    jobs = [
        ("locked_family", {"pidfile": str(tmp_path / f"pids{i}"), "count_file": str(starts)})
        for i in range(3)
    ]
    batch_id, job_ids = await submit_through(system.client, jobs)
    async with ReadModel(settings) as rm, system.client() as client:
        tool, grandchild = await pids_of(tmp_path / "pids0")
        await _wait_job(rm, job_ids[0], "running")
        response = await client.post(
            f"/api/batches/{batch_id}/fail", json={"reason": "quota exhausted"}
        )
        assert response.status_code == 202, response.text
        assert response.json()["jobs"] == [job_ids[1], job_ids[2], job_ids[0]]
        batch, latest = await rm.wait_ended(batch_id, 3)
        await wait_dead(tool)
        await wait_dead(grandchild)
    assert [j["status"] for j in latest] == ["cancelled"] * 3
    assert [j["started_at"] is None for j in latest] == [False, True, True]
    assert (batch["status"], batch["failed_reason"]) == ("failed", "quota exhausted")
    assert counters(batch) == (0, 0, 0, 0, 3)
    assert len(starts.read_text().split()) == 1
    assert not (tmp_path / "pids1").exists()
    assert not (tmp_path / "pids2").exists()


async def test_fail_of_an_ended_batch_is_409_batch_finished(
    settings: Settings, system: System
) -> None:
    """A batch whose jobs all ended cannot be failed; the answer says how it ended."""
    batch_id, _ = await submit_through(system.client, [emit()])
    async with ReadModel(settings) as rm, system.client() as client:
        await rm.wait_ended(batch_id, 1)
        response = await client.post(f"/api/batches/{batch_id}/fail")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "BATCH_FINISHED"
    assert response.json()["error"]["status"] == "completed"


async def test_pending_runs_only_the_jobs_that_failed_again(
    settings: Settings, system: System
) -> None:
    """`pending` after some jobs failed: only those get a new attempt; completed ones stay."""
    batch_id, job_ids = await submit_through(system.client, [emit(), emit(exit_code=2), emit()])
    async with ReadModel(settings) as rm, system.client() as client:
        await rm.wait_ended(batch_id, 3)
        response = await client.post(f"/api/batches/{batch_id}/pending")
        assert response.status_code == 202, response.text
        assert response.json()["jobs"] == [job_ids[1]]
        (attempt,) = response.json()["attempts"]
        batch, jobs = await rm.wait_batch(
            batch_id, lambda b, js: js[1]["id"] == attempt and js[1]["status"] == "failed"
        )
    assert [j["id"] for j in jobs] == [job_ids[0], attempt, job_ids[2]]
    assert counters(batch) == real_counts(jobs) == (0, 0, 2, 1, 0)


async def test_restart_with_job_ids_runs_only_those_jobs(
    settings: Settings, system: System
) -> None:
    """job_ids limits a restart to the named jobs (any attempt's id names its job)."""
    batch_id, job_ids = await submit_through(system.client, [emit(), emit(), emit()])
    async with ReadModel(settings) as rm, system.client() as client:
        await rm.wait_ended(batch_id, 3)
        response = await client.post(
            f"/api/batches/{batch_id}/restart", json={"job_ids": [job_ids[2]]}
        )
    assert response.status_code == 202, response.text
    assert response.json()["jobs"] == [job_ids[2]]


async def test_unknown_job_ids_are_refused_and_named(settings: Settings, system: System) -> None:
    """job_ids that are not jobs of the batch answer 422 UNKNOWN_JOBS listing them; nothing runs."""
    batch_id, job_ids = await submit_through(system.client, [emit()])
    async with ReadModel(settings) as rm, system.client() as client:
        await rm.wait_ended(batch_id, 1)
        response = await client.post(
            f"/api/batches/{batch_id}/restart", json={"job_ids": [job_ids[0], "nope", "x"]}
        )
        assert response.status_code == 422
        error = response.json()["error"]
        assert (error["code"], error["unknown"], error["unknown_count"]) == (
            "UNKNOWN_JOBS",
            ["nope", "x"],
            2,
        )
        assert len(await rm.jobs(batch_id, latest_only=False)) == 1


async def test_archive_hides_the_batch_and_unarchive_shows_it_again(
    settings: Settings, system: System
) -> None:
    """An archived batch leaves the default batch list (archived=true finds it); unarchived it
    is back."""
    batch_id, _ = await submit_through(system.client, [emit()])

    async def listed(client: httpx.AsyncClient, **query: str) -> bool:
        response = await client.get("/api/batches", params=query)
        assert response.status_code == 200, response.text
        return batch_id in [b["id"] for b in response.json()["items"]]

    async with ReadModel(settings) as rm, system.client() as client:
        await rm.wait_ended(batch_id, 1)
        assert await listed(client)
        response = await client.post(f"/api/batches/{batch_id}/archive")
        assert response.status_code == 202, response.text
        assert not await listed(client)
        assert await listed(client, archived="true")
        response = await client.post(f"/api/batches/{batch_id}/unarchive")
        assert response.status_code == 202, response.text
        assert await listed(client)
        assert (await rm.batch(batch_id))["archived"] is False


async def test_unknown_batch_is_404(system: System) -> None:
    """An action on a batch that does not exist answers 404 BATCH_NOT_FOUND."""
    async with system.client() as client:
        response = await client.post("/api/batches/nope/restart")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "BATCH_NOT_FOUND"


async def test_own_jobs_token_cannot_act_on_another_callers_batch(
    settings: Settings, system: System
) -> None:
    """A token limited to its own jobs gets 404 for others' batches and acts on its own."""
    alice = await system.create_token("alice", "operator", own_jobs_only=True)
    theirs, _ = await submit_through(system.client, [emit()])
    mine, _ = await submit_through(lambda: system.client(token=alice), [emit()])
    async with ReadModel(settings) as rm, system.client(token=alice) as client:
        await rm.wait_ended(theirs, 1)
        await rm.wait_ended(mine, 1)
        for action in ("restart", "pending", "fail", "archive", "unarchive"):
            response = await client.post(f"/api/batches/{theirs}/{action}")
            assert response.status_code == 404, (action, response.text)
            assert response.json()["error"]["code"] == "BATCH_NOT_FOUND"
        assert (await client.post(f"/api/batches/{mine}/archive")).status_code == 202


async def test_viewer_cannot_act_on_a_batch(settings: Settings, system: System) -> None:
    """A viewer token gets 403 FORBIDDEN naming the operator role; nothing is published."""
    viewer = await system.create_token("watcher", "viewer")
    batch_id, _ = await submit_through(system.client, [emit()])
    async with ReadModel(settings) as rm, system.client(token=viewer) as client:
        await rm.wait_ended(batch_id, 1)
        response = await client.post(f"/api/batches/{batch_id}/restart")
        assert response.status_code == 403
        assert response.json()["error"]["required_role"] == "operator"
        assert len(await rm.jobs(batch_id, latest_only=False)) == 1


async def test_restart_racing_with_jobs_finishing_runs_no_job_twice(
    settings: Settings, system: System
) -> None:
    """A restart while jobs finish: every job ends, none ran twice, counters match the jobs."""
    total = 12
    batch_id, _job_ids = await submit_through(
        system.client, [emit(lines=3, interval="0.05") for _ in range(total)]
    )
    async with ReadModel(settings) as rm, system.client() as client:
        await rm.wait_batch(batch_id, lambda b, js: b["completed_jobs"] >= 2)
        first, second = await asyncio.gather(
            client.post(f"/api/batches/{batch_id}/restart"),
            client.post(f"/api/batches/{batch_id}/restart"),
        )
        assert (first.status_code, second.status_code) == (202, 202), first.text + second.text
        batch, latest = await rm.wait_ended(batch_id, total)
        every = await rm.jobs(batch_id, latest_only=False)
    assert counters(batch) == real_counts(latest)
    assert batch["total_jobs"] == total
    assert sorted(j["batch_index"] for j in latest) == list(range(total))
    for job in every:
        assert (await status_events(settings, job["id"])).count("running") <= 1, job["id"]
    # Two restarts on the same picture name the same new attempts: at most one per job each.
    assert len({j["id"] for j in every}) == len(every)
    assert max(j["attempt"] for j in every) <= 3


async def _wait_job(
    rm: ReadModel, job_id: str, *statuses: str, timeout: float = 30.0
) -> dict[str, Any]:
    job: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                job = await rm.job(job_id)
                if job and job["status"] in statuses:
                    return job
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"job {job_id} never became {statuses}: {job}") from None


async def _projector_behind(settings: Settings, system: System) -> str:
    """A finished batch, then the projector stopped and one more event stored behind its back."""
    batch_id, _ = await submit_through(system.client, [emit()])
    async with ReadModel(settings) as rm:
        await rm.wait_ended(batch_id, 1)
    await system.stop_service("projector")
    await submit_through(system.client, [emit()])
    return batch_id


async def test_action_waits_for_a_projector_back_within_the_catch_up_timeout(
    settings: Settings, system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projector back before the catch-up timeout: the action waits and then acts."""
    monkeypatch.setattr(attempt_rows, "CATCH_UP_TIMEOUT", 4.0)
    batch_id = await _projector_behind(settings, system)
    async with system.client() as client:
        action = asyncio.ensure_future(client.post(f"/api/batches/{batch_id}/restart"))
        await asyncio.sleep(0.5)  # the action is waiting: the projector comes back meanwhile
        assert not action.done()
        await system.start_projector()
        response = await action
    assert response.status_code == 202, response.text
    assert len(response.json()["attempts"]) == 1


async def test_action_on_a_read_model_behind_past_the_timeout_is_503(
    settings: Settings, system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projector away longer than the catch-up timeout: 503 READ_MODEL_BEHIND, nothing sent."""
    monkeypatch.setattr(attempt_rows, "CATCH_UP_TIMEOUT", 1.0)
    batch_id = await _projector_behind(settings, system)
    async with system.client() as client, ReadModel(settings) as rm:
        response = await client.post(f"/api/batches/{batch_id}/restart")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "READ_MODEL_BEHIND"
        assert response.headers["retry-after"] == "2"
        await system.start_projector()
        await rm.wait_ended(batch_id, 1)
        assert len(await rm.jobs(batch_id, latest_only=False)) == 1
