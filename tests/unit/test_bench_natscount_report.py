"""The NATS op counter's report (bench/natscount) splits a counted run's ops by job, and counts
an idle window after the jobs apart: what the jobs' markers cost once they are over."""

from __future__ import annotations

from pathlib import Path

from bench.natscount import report

RUNNER = "runner"
RECORD = "$KV.jobrunner_locks.run.{job}"


def write_run(
    directory: Path, ops: list[tuple[float, str, str]], idle: tuple[float, float]
) -> None:
    """A counted run of three jobs (POST at 10, 20, 30 s, first line 1 s after each), one runner
    process whose ops are ``(at, subject, marker kind)`` deliveries, and ``idle``."""
    (directory / "100.proc").write_text(f"-m {RUNNER}")  # as sitecustomize writes it
    marks = [f"job{n}\t{10.0 * n}\t{10.0 * n + 1}" for n in (1, 2, 3)]
    (directory / "marks.tsv").write_text("\n".join(marks) + "\n")
    lines = [
        f"{int(at * 1e9)}\tin\tjobrunner-runner\tHMSG\t{subject}\t$JS.ACK.x\t0\t{kind}"
        for at, subject, kind in ops
    ]
    (directory / "100.tsv").write_text("\n".join(lines) + "\n")
    (directory / "idle.tsv").write_text(f"{idle[0]}\t{idle[1]}\n")


def key(subject: str, kind: str) -> report.Key:
    return (RUNNER, "jobrunner-runner", "in", "HMSG", subject, "reply", kind)


def test_ops_in_the_idle_window_are_counted_apart_from_the_jobs(tmp_path: Path) -> None:
    write_run(
        tmp_path,
        [
            (10.5, RECORD.format(job="job1"), ""),  # job 1, before its first line
            (12.0, RECORD.format(job="job1"), "DEL"),  # job 1, after
            (35.0, RECORD.format(job="job2"), "DEL"),  # in the idle window
            (36.0, RECORD.format(job="job1"), "MaxAge"),  # in the idle window
            (45.0, RECORD.format(job="job2"), "MaxAge"),  # after the window: nowhere
        ],
        idle=(34.0, 44.0),
    )
    jobs, before, after, idle = report.count(tmp_path, skip=0)
    folded = "$KV.jobrunner_locks.run.<job>"
    assert jobs == 2  # the last job's tail is cut short: not counted
    assert before == {key(folded, ""): 1}
    assert after == {key(folded, "DEL"): 1}
    assert idle == {key(folded, "DEL"): 1, key(folded, "MaxAge"): 1}


def test_a_run_without_an_idle_window_counts_as_before(tmp_path: Path) -> None:
    write_run(tmp_path, [(22.0, RECORD.format(job="job2"), "DEL")], idle=(0.0, 0.0))
    (tmp_path / "idle.tsv").unlink()
    jobs, _, after, idle = report.count(tmp_path, skip=0)
    assert jobs == 2
    assert after == {key("$KV.jobrunner_locks.run.<job>", "DEL"): 1}
    assert not idle
