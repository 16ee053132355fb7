"""``python -m bench.natscount.report <dir> [--skip N]``: a counted dispatch run's NATS ops per
job, by process, connection, direction, op and subject (job ids, inboxes and ack subjects
folded), split at the moment the job's first line reached the client; and the run's idle window
after its jobs, if it had one (``JOBRUNNER_BENCH_NATSCOUNT_IDLE``), in all and per job run."""

from __future__ import annotations

import argparse
import bisect
import re
from collections import Counter
from pathlib import Path

Key = tuple[str, str, str, str, str, str, str]


def process_names(directory: Path) -> dict[str, str]:
    """pid -> the service (``-m jobrunner.cli <service>``), or the command."""
    names = {}
    for proc in directory.glob("*.proc"):
        argv = proc.read_text().split()
        names[proc.stem] = argv[1] if argv[:1] == ["-m"] and len(argv) > 1 else " ".join(argv[:2])
    return names


def read_marks(directory: Path) -> list[tuple[str, float, float]]:
    """(job id, POST started, first line at the client), monotonic seconds, in order."""
    marks = []
    for line in (directory / "marks.tsv").read_text().splitlines():
        job, started, first_line = line.split("\t")[:3]
        marks.append((job, float(started), float(first_line)))
    return marks


def folded(subject: str, jobs: set[str]) -> str:
    for job in jobs:
        subject = subject.replace(job, "<job>")
    subject = re.sub(r"_INBOX\.[A-Za-z0-9.]+", "_INBOX.<x>", subject)
    subject = re.sub(r"\$JS\.(ACK|FC)\..*", r"$JS.\1.<...>", subject)
    subject = re.sub(r"(\$JS\.API\.CONSUMER\.(INFO|DELETE)\.[^.]+)\.[^.]+$", r"\1.<name>", subject)
    return re.sub(r"\b[A-Za-z0-9]{22}\b", "<nuid>", subject)


def read_idle(directory: Path) -> tuple[float, float] | None:
    """The idle window after the jobs (monotonic seconds), if the run had one."""
    path = directory / "idle.tsv"
    if not path.exists():
        return None
    start, end = path.read_text().split()
    return float(start), float(end)


def count(directory: Path, skip: int) -> tuple[int, Counter[Key], Counter[Key], Counter[Key]]:
    names = process_names(directory)
    marks = read_marks(directory)
    jobs = {job for job, _, _ in marks}
    starts = [started for _, started, _ in marks]
    window = read_idle(directory)
    before: Counter[Key] = Counter()
    after: Counter[Key] = Counter()
    idle: Counter[Key] = Counter()
    for log in directory.glob("*.tsv"):
        if log.name in ("marks.tsv", "idle.tsv"):
            continue
        for line in log.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) < 8:
                continue
            at = int(fields[0]) / 1e9
            direction, connection, op, subject, reply, _, kind = fields[1:8]
            if op == "UNSUB":
                subject = "<sid>"
            process = names.get(log.stem, log.stem)
            shown = folded(subject, jobs)
            key: Key = (process, connection, direction, op, shown, "reply" if reply else "", kind)
            if window and window[0] <= at <= window[1]:
                idle[key] += 1
                continue
            index = bisect.bisect_right(starts, at) - 1
            # Up to the next job's POST (the last job: not counted, its tail is cut short).
            if index < skip or index >= len(marks) - 1:
                continue
            (before if at <= marks[index][2] else after)[key] += 1
    return len(marks) - 1 - skip, before, after, idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--skip", type=int, default=10, help="first jobs left out (warm-up)")
    args = parser.parse_args()
    jobs, before, after, idle = count(args.directory, args.skip)
    print(f"{jobs} jobs; per job: before the first line reached the client | after")
    for key in sorted(set(before) | set(after)):
        print("\t".join(key) + f"\t{before[key] / jobs:.2f}\t{after[key] / jobs:.2f}")
    window = read_idle(args.directory)
    if window:
        run = len(read_marks(args.directory))
        print(
            f"\nidle window of {window[1] - window[0]:.1f} s after the {run} jobs:"
            " in all | per job run"
        )
        for key in sorted(idle):
            print("\t".join(key) + f"\t{idle[key]}\t{idle[key] / run:.2f}")


if __name__ == "__main__":
    main()
