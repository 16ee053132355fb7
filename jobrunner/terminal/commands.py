"""The terminal client's commands: ``submit``, ``jobs``, ``show``, ``logs``, ``cancel``.

Each talks to the HTTP API only (so it works against any jobrunner, local or not) and ends with
an exit code a script can act on (README "Terminal client").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from jobrunner.terminal import health
from jobrunner.terminal.connection import (
    EXIT_CANCELLED,
    EXIT_FAILED_WITHOUT_CODE,
    Api,
    ClientError,
    environ,
    find_target,
)
from jobrunner.terminal.follow import (
    RECONNECT_FOR_SECONDS,
    Follower,
    check_job_id,
    log_line_text,
    outcome_line,
)
from jobrunner.terminal.parameters import parse_parameters
from jobrunner.terminal.shown_text import plain


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the jobrunner server (also JOBRUNNER_URL)")
    common.add_argument("--token", help="an API token (also JOBRUNNER_TOKEN)")
    common.add_argument(
        "--state-dir", help="find the server of a running `jobrunner up` by its state directory"
    )

    # For the commands that follow a job's stream.
    following = argparse.ArgumentParser(add_help=False)
    following.add_argument(
        "--reconnect-for",
        type=_seconds,
        default=RECONNECT_FOR_SECONDS,
        metavar="SECONDS",
        help="how long a dropped stream is retried before giving up (exit 69; default "
        f"{RECONNECT_FOR_SECONDS:g})",
    )

    p = sub.add_parser(
        "submit",
        parents=[common, following],
        help="start a job through the HTTP API (and follow it with --follow)",
    )
    p.add_argument("job_type", help="the job type (a wrong one lists those there are)")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter, typed by the job type; repeat a multi-choice one",
    )
    p.add_argument("--json", dest="body", help="the parameters as a JSON object instead of -p")
    p.add_argument("--follow", "-f", action="store_true", help="follow the job to its end")
    p.set_defaults(func=guarded(submit))

    p = sub.add_parser("jobs", parents=[common], help="list jobs, newest first")
    p.add_argument("--status", action="append", help="repeatable")
    p.add_argument("--type", dest="job_type", action="append", help="repeatable")
    p.add_argument("--search", help="text in the type, parameters or result")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20, at most 500)")
    p.add_argument("--json", action="store_true", help="the API's JSON instead of a table")
    p.set_defaults(func=guarded(list_jobs))

    p = sub.add_parser("show", parents=[common], help="one job: status, progress, result")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="the API's JSON")
    p.set_defaults(func=guarded(show))

    p = sub.add_parser(
        "logs", parents=[common, following], help="a job's log (and more with --follow)"
    )
    p.add_argument("job_id")
    p.add_argument("--tail", type=int, help="only the last N lines")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    p.set_defaults(func=guarded(logs))

    p = sub.add_parser("cancel", parents=[common], help="cancel a pending or running job")
    p.add_argument("job_id")
    p.set_defaults(func=guarded(cancel))

    p = sub.add_parser(
        "health",
        parents=[common],
        help="the server's health: its status and each problem "
        "(exit 0 ok, 1 degraded, 2 unavailable, 69 no jobrunner answering)",
    )
    p.add_argument("--json", action="store_true", help="the API's JSON")
    p.set_defaults(func=guarded(show_health))


def _seconds(raw: str) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds (0 or more)")
    return seconds


def _api(args: argparse.Namespace) -> Api:
    return Api(find_target(args.url, args.token, args.state_dir, environ()))


def guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The command, with a ClientError shown as one sentence on stderr and its exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ClientError as exc:
            print(f"jobrunner {args.command}: {exc}", file=sys.stderr)
            return exc.exit_code

    return run


def submit(args: argparse.Namespace) -> int:
    with _api(args) as api:
        types = {t["name"]: t for t in api.get("/api/job-types")}
        job_type = types.get(args.job_type)
        if job_type is None:
            raise ClientError(
                f"there is no job type {args.job_type!r}; known: {', '.join(sorted(types))}"
            )
        if args.body is not None:
            if args.param:
                raise ClientError("give the parameters with -p or with --json, not both")
            try:
                parameters = json.loads(args.body)
            except ValueError as exc:
                raise ClientError(f"--json is not valid JSON: {exc}") from None
        else:
            parameters = parse_parameters(job_type, args.param)
        created = api.post("/api/jobs", {"job_type": args.job_type, "parameters": parameters})
        job_id = str(created["id"])
        err = Console(stderr=True)
        err.print(f"job {job_id} ({args.job_type}) is pending", highlight=False)
        # An external job's worker needs these, and the server shows the token only this once.
        url, token = created.get("callback_url"), created.get("callback_token")
        callback = [str(url), str(token)] if url and token else []
        if not args.follow:
            print("\n".join([job_id, *callback]))
            return 0
        if callback:
            # One print a line: plain() shows a newline inside its text as a symbol.
            for line in (f"callback_url {url}", f"callback_token {token} (shown once)"):
                # soft_wrap: never broken inside the address or the token.
                err.print(plain(line), highlight=False, soft_wrap=True)
        return _follow(api, job_id, reconnect_for=args.reconnect_for)


def _follow(
    api: Api, job_id: str, skip_lines_upto: int = 0, reconnect_for: float = RECONNECT_FOR_SECONDS
) -> int:
    console = Console(highlight=False)
    follower = Follower(
        api, job_id, console, skip_lines_upto=skip_lines_upto, reconnect_for=reconnect_for
    )
    while True:
        try:
            done = follower.run()
            break
        except KeyboardInterrupt:
            if not _cancel_on_interrupt(api, job_id):
                Console(stderr=True).print(
                    f"stopped following; job {job_id} goes on "
                    f"(`jobrunner logs {job_id} --follow` follows it again)"
                )
                return EXIT_CANCELLED
            # Cancelled: keep following to show how it ends.
    # Text, not a string: a worker's error message is never markup, nor ":smile:" an emoji.
    Console(stderr=True).print(plain(outcome_line(done)), highlight=False)
    return exit_code_of(done)


def _cancel_on_interrupt(api: Api, job_id: str) -> bool:
    """Ctrl-C while following: ask whether to cancel the job or just stop following."""
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"\nCancel job {job_id} too? [y/N] ")
    except (KeyboardInterrupt, EOFError):
        return False
    if answer.strip().lower() not in ("y", "yes", "j", "ja"):
        return False
    try:
        api.post(f"/api/jobs/{job_id}/cancel")
    except ClientError as exc:
        Console(stderr=True).print(plain(f"not cancelled: {exc}"), highlight=False)
        return False
    return True


def exit_code_of(job: dict[str, Any]) -> int:
    """0 completed; the tool's exit code when it failed with one; 75 failed without one;
    130 cancelled."""
    status = job.get("status")
    if status == "completed":
        return 0
    if status == "cancelled":
        return EXIT_CANCELLED
    code = job.get("exit_code")
    if isinstance(code, int) and 0 < code < 256:
        return code
    return EXIT_FAILED_WITHOUT_CODE


def list_jobs(args: argparse.Namespace) -> int:
    params: list[tuple[str, str | int]] = [("limit", args.limit)]
    params += [("status", s) for s in args.status or []]
    params += [("job_type", t) for t in args.job_type or []]
    if args.search:
        params.append(("search", args.search))
    with _api(args) as api:
        page = api.get("/api/jobs", params=params)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    table = Table(box=None, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=32)  # ids are never cut: they are typed on
    for column in ("type", "status", "progress", "created", "duration"):
        table.add_column(column, no_wrap=column in ("status", "created"))
    for job in page["items"]:
        table.add_row(
            plain(job["id"]),
            plain(job["job_type"]),
            _status_text(job),
            plain(_progress_text(job.get("progress"))),
            str(job["created_at"])[:19].replace("T", " "),
            f"{job['duration_seconds']:.1f} s" if job.get("duration_seconds") else "",
        )
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)  # piped: one job per line, nothing cut
    console.print(table)
    return 0


def show(args: argparse.Namespace) -> int:
    with _api(args) as api:
        job = api.get(f"/api/jobs/{check_job_id(args.job_id)}")
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    console = Console(highlight=False)
    rows = [
        ("id", job["id"]),
        ("type", job["job_type"]),
        ("status", _status_text(job)),
        ("progress", _progress_text(job.get("progress"))),
        # Non-ASCII as written (JSON still escapes C0 controls; plain() shows DEL and C1).
        ("parameters", json.dumps(job.get("parameters") or {}, ensure_ascii=False)),
        ("created", job.get("created_at")),
        ("started", job.get("started_at")),
        ("finished", job.get("finished_at")),
        ("exit code", job.get("exit_code")),
        ("error", (job.get("error") or {}).get("message")),
        ("result", json.dumps(job["result"], ensure_ascii=False) if job.get("result") else None),
        ("lines", job.get("log_count")),
    ]
    for name, value in rows:
        if value not in (None, ""):
            # A status is already coloured Text; everything else is the server's text.
            shown = value if isinstance(value, Text) else plain(value)
            # Unwrapped, as the terminal wraps it: a result cut by rich at 80 columns when
            # piped was split mid-word, and its continuation lost the column anyway.
            console.print(Text.assemble((f"{name:>10}", "bold"), "  ", shown), soft_wrap=True)
    return 0


def logs(args: argparse.Namespace) -> int:
    job_id = check_job_id(args.job_id)
    with _api(args) as api:
        last_seq = 0
        if args.tail is not None or not args.follow:
            last_seq = _print_logs(api, job_id, args.tail)
        if not args.follow:
            return 0
        job = api.get(f"/api/jobs/{job_id}")
        # Lines printed above are not printed again; the stream shows the rest and the end.
        return _follow(
            api, job_id, skip_lines_upto=last_seq if job else 0, reconnect_for=args.reconnect_for
        )


def _print_logs(api: Api, job_id: str, tail: int | None) -> int:
    """Print the stored lines (the last ``tail``, or all, page by page); the last seq printed."""
    console = Console(highlight=False)
    params: dict[str, Any] = {"tail": tail} if tail is not None else {"limit": 5000}
    last_seq = 0
    while True:
        page = api.get(f"/api/jobs/{job_id}/logs", params=params)
        for line in page["items"]:
            last_seq = max(last_seq, int(line["seq"]))
            console.print(log_line_text(line), soft_wrap=True)
        if tail is not None or page.get("next_after") is None:
            return last_seq
        params = {"after": page["next_after"], "limit": 5000}


def show_health(args: argparse.Namespace) -> int:
    with _api(args) as api:
        return health.health(api, args.json)


def cancel(args: argparse.Namespace) -> int:
    with _api(args) as api:
        answer = api.post(f"/api/jobs/{check_job_id(args.job_id)}/cancel")
    print(f"job {answer['id']}: cancel requested ({answer['status']})")
    return 0


def _status_text(job: dict[str, Any]) -> Text:
    status = str(job["status"])
    colour = {"completed": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}
    return plain(status, colour.get(status, "white"))


def _progress_text(progress: dict[str, Any] | None) -> str:
    if not progress:
        return ""
    parts = []
    if progress.get("current") is not None:
        total = progress.get("total")
        parts.append(f"{progress['current']}/{total}" if total else str(progress["current"]))
    if progress.get("percent") is not None:
        parts.append(f"{progress['percent']:.0f}%")
    if progress.get("phase"):
        parts.append(str(progress["phase"]))
    return " ".join(parts)
