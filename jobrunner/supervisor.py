"""``jobrunner up``: embedded NATS and Postgres in a state directory, then the four services as
child processes, restarted if they crash (the servers too: `embedded/keeper.py`), all stopped in
order on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog

from jobrunner.common import deathsignal, retry
from jobrunner.common.cpupriority import (
    AUTOGROUP_RETRY_SECONDS,
    nicer_than_this_process,
    set_autogroup_niceness,
    set_thread_niceness,
)
from jobrunner.common.processname import process_name
from jobrunner.common.refusal import REFUSED_EXIT
from jobrunner.common.settings import Settings, SettingsError
from jobrunner.embedded.keeper import keep_running
from jobrunner.embedded.nats import EmbeddedNats, load_or_create_secret
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.preflight import check_port_free, missing_tools, preflight

log = structlog.get_logger()

# Stopped in this order: the runner first, so its last events reach NATS before NATS stops.
SERVICES = ("projector", "runner", "notifier", "api")
# The notifier after the runner: the ends of jobs the runner stops are still delivered.
STOP_ORDER = ("runner", "notifier", "api", "projector")
# Services whose work may wait: they react to the same events as the runner and the API (every
# event a job publishes wakes them all), and on a machine with few cores the job's tool and its
# first line would otherwise wait for a core behind the read models' and webhooks' bookkeeping.
# They run at a lower CPU priority (`background_nice`); when the cores are free they get them.
BACKGROUND = ("projector", "notifier")
AUTOGROUP_TRIES = 5
# A service still stopping this long after its SIGTERM is killed (each bounds its own stop by
# the stop_seconds setting, below this).
STOP_GRACE_SECONDS = 20.0


class Service:
    def __init__(self, name: str, env: dict[str, str], nice: int = 0) -> None:
        self.name = name
        self.env = env
        # Added to this process's niceness for the service (0: the same priority).
        self.nice = nice
        self.proc: asyncio.subprocess.Process | None = None
        # Restarts since the service last ran stably (``restart_delay``).
        self.restarts = 0
        # When its process was started (``time.monotonic``): how long it ran before it exited.
        self.started_at = 0.0

    async def start(self) -> None:
        # Dies with this process even when it is SIGKILLed (no SIGTERM to pass on): a service
        # left behind would go on retrying servers that died with it, for ever.
        argv, preexec_fn = deathsignal.launch(
            [sys.executable, "-m", "jobrunner.cli", self.name], None, self.env
        )
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
        self.started_at = time.monotonic()
        if self.nice:
            await lower_priority(self.proc.pid, self.nice)
        log.info("service started", service=self.name, pid=self.proc.pid)

    async def stop(self, timeout: float = STOP_GRACE_SECONDS) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            log.warning("service did not stop in time, killing it", service=self.name)
            self.proc.kill()
            await self.proc.wait()


async def lower_priority(pid: int, by: int) -> None:
    """Make a just started child ``by`` nicer than this process, in its threads and in its
    autogroup (``common.cpupriority``). The services start a few milliseconds apart, and the
    kernel may take one autogroup change per 100 ms: this waits its turn."""
    niceness = nicer_than_this_process(by)
    try:
        set_thread_niceness(pid, niceness)
    except OSError as exc:  # gone already (its exit is seen and handled), or not allowed
        log.warning("service priority not lowered", pid=pid, error=repr(exc))
    for _ in range(AUTOGROUP_TRIES):
        if set_autogroup_niceness(pid, niceness):
            return
        await asyncio.sleep(AUTOGROUP_RETRY_SECONDS)
    log.warning("service autogroup priority not lowered", pid=pid)


def write_runtime(state_dir: Path, data: dict[str, str]) -> None:
    path = state_dir / "runtime.json"
    path.write_text(json.dumps(data, indent=2))
    path.chmod(0o600)


# A /health body is a few KiB at most (the projector's set-aside error may appear twice in it):
# read it whole, so that its JSON parses, but not without bound.
HEALTH_BODY_LIMIT = 4 * 1024 * 1024


def health_answer(url: str) -> tuple[int, bytes] | None:
    """The status and body of ``url``'s /health, in any status (503 while a server is away);
    None while nothing answers there in HTTP (yet)."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return int(response.status), bytes(response.read(HEALTH_BODY_LIMIT))
    except urllib.error.HTTPError as answer:  # an answer all the same
        with answer:
            return answer.code, bytes(answer.read(HEALTH_BODY_LIMIT))
    except (OSError, http.client.HTTPException):  # not answering, or not in HTTP
        return None


def health_body(body: bytes) -> dict[str, Any]:
    """A /health body as a JSON object (empty: it is none)."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def problem_codes(body: dict[str, Any]) -> str:
    """The codes of the problems a /health body names, as "A, B" ("none named": it names none)."""
    problems = body.get("problems")
    codes = [
        str(problem.get("code"))
        for problem in (problems if isinstance(problems, list) else [])
        if isinstance(problem, dict)
    ]
    return ", ".join(codes) or "none named"


async def wait_healthy(
    host: str,
    port: int,
    instance: str,
    proc: Service,
    timeout: float = 60.0,
    others: tuple[Service, ...] = (),
) -> None:
    """Until the API started on ``host``:``port`` answers /health with 200, naming ``instance``
    (its ``api_instance_id``). Between the start's check that the port is free and the API
    taking it, another program may take it: an answer that does not name our API fails the
    start naming the port, rather than announce that program as jobrunner (and our API, unable
    to listen, restarted for ever). This covers the start only: once it is done, the API's
    restarts are the supervisor's, who first waits for its port to be free (``port_freed``)."""
    url = f"http://{_reachable(host)}:{port}"
    last_ours: tuple[int, dict[str, Any]] | None = None  # our API's last answer, not 200
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        answer = await asyncio.to_thread(health_answer, url)
        if answer is not None:
            status, body = answer
            decoded = health_body(body)
            if decoded.get("instance") != instance:
                if proc.proc is None:
                    state = "not started"
                else:
                    state = "runs" if proc.proc.returncode is None else "exited"
                raise RuntimeError(
                    f"port {port} does not answer as this jobrunner's API: /health answered "
                    f"{status} {body[:200].decode(errors='replace')!r}, not instance "
                    f"{instance!r} (our api {state}); another program may have taken the port "
                    "after the start checked it: stop it, or choose another port with --port"
                )
            if status == 200:
                return
            last_ours = (status, decoded)
        if proc.proc is not None and proc.proc.returncode is not None:
            raise RuntimeError(f"the api exited during start-up (port {port}); see the log above")
        for other in others:
            if other.proc is not None and other.proc.returncode == REFUSED_EXIT:
                raise RuntimeError(f"the {other.name} refused to start; jobrunner stops")
        await asyncio.sleep(0.2)
    if last_ours is not None:
        status, decoded = last_ours
        raise RuntimeError(
            f"the api answered {status} on {url}/health for {timeout:.0f} s: "
            f"{problem_codes(decoded)}"
        )
    raise RuntimeError(f"the api did not answer on {url}/health within {timeout:.0f} s")


# A service's own /metrics says whether it has finished its start (``jobrunner_service_started``).
STARTED_RE = re.compile(r"^jobrunner_service_started(?:\{[^}]*\})? 1(?:\.0)?$", re.MULTILINE)
STARTED_POLL_SECONDS = 0.2


def has_started(service: Service) -> bool:
    """Whether ``service`` says on its metrics listener that its start is done. One that does
    not answer (still importing, paused, gone), or not in HTTP (another program took its port
    meanwhile), has not."""
    url = f"http://{service.env['JOBRUNNER_METRICS_ADDRESS']}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(STARTED_RE.search(response.read().decode(errors="replace")))
    except (OSError, http.client.HTTPException):  # not answering, or not in HTTP
        return False


async def wait_started(services: list[Service], timeout: float, stop: asyncio.Event) -> None:
    """Wait until every one of ``services`` has finished its start, saying which it waits for;
    past ``timeout``, say which are still not up and where their log is, and return all the
    same: a late projector or notifier delays read models and webhooks, nothing is lost (they
    take up the stream where they left it). A service that dies meanwhile is the supervisor's
    (``_supervise``, running alongside): restarted, or everything stopped if it refused."""
    waiting = list(services)
    said: set[str] = set()
    deadline = asyncio.get_running_loop().time() + timeout
    while waiting and not stop.is_set():
        answers = await asyncio.gather(*(asyncio.to_thread(has_started, s) for s in waiting))
        waiting = [s for s, started in zip(waiting, answers, strict=True) if not started]
        for service in waiting:
            if service.name not in said:
                said.add(service.name)
                print(f"  waiting for the {service.name}…", flush=True)
        if not waiting:
            return
        if asyncio.get_running_loop().time() >= deadline:
            for service in waiting:
                print(
                    f"  {not_up(service)} after {timeout:g} s: its log is in this output, the"
                    f" lines with service={service.name}; jobrunner serves meanwhile.",
                    flush=True,
                )
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STARTED_POLL_SECONDS)


def not_up(service: Service) -> str:
    """How a service still not up is named: by its pid while it runs; one that exited, by its
    exit code (the supervisor restarts it)."""
    proc = service.proc
    if proc is None:
        return f"the {service.name} is not started"
    if proc.returncode is not None:
        return (
            f"the {service.name} (pid {proc.pid}) exited with code {proc.returncode}, to be"
            " restarted; it is not up"
        )
    return f"the {service.name} (pid {proc.pid}) is not up"


async def first_admin_token(settings: Settings, nats_url: str) -> str | None:
    """On the first start (no token exists yet) create the ``admin`` token; else ``None``."""
    import nats

    from jobrunner.contracts.names import Names
    from jobrunner.services.api.security.tokens import Role, TokenStore

    nc = await nats.connect(nats_url, name="jobrunner-up", max_reconnect_attempts=1)
    try:
        store = await TokenStore.open(
            nc.jetstream(), Names(settings.prefix), settings.stream_replicas
        )
        if await store.all():
            return None
        _, token = await store.create("admin", Role.ADMIN, created_by="jobrunner up")
        return token
    finally:
        await nc.close()


def jobrunner_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jobrunner")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def check_exposure(settings: Settings) -> None:
    """Refuse ``--no-auth`` anywhere but on a loopback address."""
    from jobrunner.services.api.security import is_loopback

    if not settings.auth and not is_loopback(settings.host):
        raise SettingsError(
            f"--no-auth is allowed only on a loopback address (127.0.0.1, ::1, localhost), "
            f"not {settings.host!r}: anyone who reaches the port could run tools"
        )


async def up(settings: Settings, config_file: str | None) -> int:
    check_exposure(settings)
    state = Path(settings.state_dir).resolve()
    job_types = preflight(settings, state, jobrunner_version())
    for problem in missing_tools(job_types):
        log.warning(problem)
    log.info("starting embedded servers", state_dir=str(state))
    # NATS listens on loopback only and wants a password, generated once into the state dir.
    nats_server = EmbeddedNats(
        state / "nats",
        user="jobrunner",
        password=load_or_create_secret(state / "nats-password"),
    )
    postgres = EmbeddedPostgres(state / "postgres" / "data")
    await asyncio.to_thread(nats_server.start)
    try:
        await asyncio.to_thread(postgres.start)
    except Exception:
        nats_server.stop()
        raise
    for server in (nats_server, postgres):
        # Its clients know it at this port now: a start again must not move it (a port chosen
        # here may be tried elsewhere when taken at the first start; then it no longer may).
        server.port_flag = None
    api_url = f"http://{_url_host(settings.host)}:{settings.port}"
    write_runtime(
        state,
        {
            "nats_url": nats_server.url,
            "database_url": postgres.url,
            "api_url": api_url,
            "prefix": settings.prefix,
        },
    )
    env = dict(os.environ)
    env.update(
        {
            "JOBRUNNER_NATS_URL": nats_server.url,
            "JOBRUNNER_DATABASE_URL": postgres.url,
            "JOBRUNNER_HOST": settings.host,
            "JOBRUNNER_PORT": str(settings.port),
            "JOBRUNNER_STATE_DIR": str(state),
            "JOBRUNNER_JOB_TYPES_FILE": settings.job_types_file,
            "JOBRUNNER_PREFIX": settings.prefix,
            "JOBRUNNER_AUTH": "true" if settings.auth else "false",
        }
    )
    if not settings.webhook_secret:
        # Generated once into the state directory, like the NATS password: webhooks are signed
        # from the first start. `cat <state_dir>/webhook-secret` shows it to receivers' owners.
        env["JOBRUNNER_WEBHOOK_SECRET"] = load_or_create_secret(state / "webhook-secret")
    if config_file:
        env["JOBRUNNER_CONFIG"] = str(Path(config_file).resolve())
    # The API's name in /health: the start takes only an answer naming it (wait_healthy).
    api_instance = process_name(settings.api_instance_id)
    env["JOBRUNNER_API_INSTANCE_ID"] = api_instance
    services = {
        name: Service(name, service_env, settings.background_nice if name in BACKGROUND else 0)
        for name, service_env in metrics_envs(env).items()
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exit_code = 0
    admin_token = None
    # A server that dies is started again on its port, as a service is (`keeper`).
    keeping = asyncio.create_task(keep_running((nats_server, postgres), stop))
    try:
        if settings.auth:
            admin_token = await first_admin_token(settings, nats_server.url)
        for service in services.values():
            await service.start()
        await wait_healthy(
            settings.host,
            settings.port,
            api_instance,
            services["api"],
            others=tuple(services.values()),
        )
        # From here a service that dies is restarted (or, if it refused, stops everything),
        # also while the start of the others is awaited.
        await run_until_stopped(
            services, stop, _announce(services, settings, stop, admin_token, api_url)
        )
    except RuntimeError as exc:
        log.error(str(exc))
        exit_code = 1
    finally:
        log.info("stopping")
        # The keeper ends its start in flight, if any (bounded by the start's timeout), rather
        # than being cancelled: its thread would go on and leave a server no one stops.
        stop.set()
        try:
            await keeping
        except Exception:
            log.exception("the keeper of the embedded servers failed")
        for name in STOP_ORDER:
            await services[name].stop()
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(postgres.stop)
        log.info("stopped")
    return exit_code


async def run_until_stopped(
    services: dict[str, Service], stop: asyncio.Event, announce: Coroutine[Any, Any, None]
) -> None:
    """Supervise ``services`` (``_supervise``) alongside ``announce`` until ``stop`` is set, or
    until either raises: then raise what ended it (a service that refused: RuntimeError), the
    other cancelled and awaited, so that nothing is left running when ``up`` stops."""
    supervising = asyncio.create_task(_supervise(services, stop))
    announcing = asyncio.create_task(announce)
    try:
        await asyncio.wait({supervising, announcing}, return_when=asyncio.FIRST_EXCEPTION)
        for task in (announcing, supervising):
            if task.done():
                task.result()  # raises what ended it (a refusal: RuntimeError)
    finally:
        for task in (announcing, supervising):
            task.cancel()
        await asyncio.gather(announcing, supervising, return_exceptions=True)


async def _announce(
    services: dict[str, Service],
    settings: Settings,
    stop: asyncio.Event,
    admin_token: str | None,
    api_url: str,
) -> None:
    """Say "running at" only once every service does its work: the first jobs' read models and
    webhooks would otherwise wait for a projector or notifier still starting (they run at a
    lower priority, and take longer to start on a busy machine)."""
    await wait_started(
        [s for s in services.values() if s.name != "api"],
        settings.up_ready_timeout_seconds,
        stop,
    )
    # The token comes first: whoever waits for the "running at" line has it by then.
    if admin_token:
        print(
            "\n  First start: an admin token was created. It is shown only this once;\n"
            "  sign in with it and keep it safe (`jobrunner token create` makes more):\n\n"
            f"    {admin_token}\n",
            flush=True,
        )
    elif not settings.auth:
        print("\n  Authentication is OFF (--no-auth): anyone on this machine can use it.")
    if not stop.is_set():  # else Ctrl-C came during the start: straight to the stop
        print(f"\n  jobrunner is running at {api_url}/jobs   (Ctrl-C stops it)\n", flush=True)


def metrics_envs(env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each service's environment: its own metrics listener on a free loopback port (no token:
    loopback only), and the API told where the others are, so that its ``/metrics`` (behind a
    token) shows all four. A restarted service keeps its port."""
    from jobrunner.embedded.serverprocess import free_port

    addresses = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
    envs = {name: {**env, "JOBRUNNER_METRICS_ADDRESS": addresses[name]} for name in SERVICES}
    envs["api"]["JOBRUNNER_METRICS_PEERS"] = ",".join(
        f"{name}=http://{address}" for name, address in addresses.items() if name != "api"
    )
    return envs


def _reachable(host: str) -> str:
    """Where to reach a server listening on ``host``, as a URL's host part."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else _url_host(host)


def _url_host(host: str) -> str:
    """``host`` as a URL's host part: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


# A service that ran this long before it exited had started fine: its exit is a new failure,
# restarted after the shortest wait, not the next of a crash loop (whose waits grow to 10 s).
STABLE_RUN_SECONDS = 30.0
FIRST_RESTART_SECONDS = 0.5
LONGEST_RESTART_SECONDS = 10.0


def restart_delay(restarts: int, ran_for: float) -> tuple[int, float]:
    """The restarts counted with this one, and the wait before it, for a service restarted
    ``restarts`` times in a row whose process ran ``ran_for`` s before it exited. A process
    that ran ``STABLE_RUN_SECONDS`` or more starts the count again: crashes days apart must not
    each wait the longest."""
    counted = 1 if ran_for >= STABLE_RUN_SECONDS else restarts + 1
    return counted, retry.delay_after(
        counted, first=FIRST_RESTART_SECONDS, longest=LONGEST_RESTART_SECONDS
    )


async def _supervise(services: dict[str, Service], stop: asyncio.Event) -> None:
    """Restart a service that dies (a crashed runner's restart cleans up after it). Each restart
    (its wait, and the API's wait for its port) runs as a task of its own, so the others are
    watched meanwhile: a crash or a refusal of one is seen while another waits. Ended by
    ``stop``, by a refusal or a failed start (raised) or cancelled, it leaves no task of its
    own waiting: pending restarts are cancelled."""
    stopper = asyncio.create_task(stop.wait())
    # Each pending restart's task, and the service it restarts (not watched meanwhile).
    restarting: dict[asyncio.Task[Any], Service] = {}
    try:
        while not stop.is_set():
            waits: dict[asyncio.Task[Any], Service] = {
                asyncio.create_task(s.proc.wait()): s
                for s in services.values()
                if s.proc is not None and s not in restarting.values()
            }
            try:
                done, _ = await asyncio.wait(
                    {stopper, *waits, *restarting}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in waits:
                    task.cancel()  # the ones still waiting; a finished one keeps its result
            if stop.is_set():
                break
            for task in done:
                if task in restarting:
                    del restarting[task]
                    task.result()  # a start that failed ends the supervision, as before
                    continue
                service = waits.get(task)
                if service is None:
                    continue
                if task.result() == REFUSED_EXIT:
                    # It refused the stored state (its one sentence is above): a restart would
                    # only refuse again.
                    raise RuntimeError(f"the {service.name} refused to start; jobrunner stops")
                ran_for = time.monotonic() - service.started_at
                service.restarts, delay = restart_delay(service.restarts, ran_for)
                log.warning(
                    "service exited, restarting",
                    service=service.name,
                    code=task.result(),
                    restart_in=delay,
                )
                restarting[asyncio.create_task(_restart(service, delay, stop))] = service
    finally:
        stopper.cancel()
        for task in restarting:
            task.cancel()
        await asyncio.gather(*restarting, return_exceptions=True)


async def _restart(service: Service, delay: float, stop: asyncio.Event) -> None:
    """Start ``service`` again after ``delay`` s (the API once its port is free), unless ``stop``
    comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    if stop.is_set():
        return
    if service.name == "api" and not await port_freed(service, stop):
        return  # stopped while another program held the port
    await service.start()


# How often, at the most, a port another program holds is looked at again: a freed port gets
# the API back within this, and a stranger holding it for hours costs a bind a few seconds.
PORT_CHECK_LONGEST_SECONDS = 5.0


def port_holder_sentence(host: str, port: int) -> str | None:
    """The start's sentence (``preflight.check_port_free``) when ``host``:``port`` cannot be
    listened on now, else None."""
    try:
        check_port_free(host, port)
    except SettingsError as exc:
        return str(exc)
    return None


async def port_freed(api: Service, stop: asyncio.Event) -> bool:
    """Wait until the API's port (its ``JOBRUNNER_HOST``/``JOBRUNNER_PORT``) is free before its
    restart: a program that took it while the API was down would make every restart die with
    "address in use", for ever and without a word. Says once, in the start's sentence, that the
    port is taken and what to do, and once that it is free again; looks at it with a back-off
    bounded by ``PORT_CHECK_LONGEST_SECONDS``. False when ``stop`` ends the wait."""
    host, port = api.env["JOBRUNNER_HOST"], int(api.env["JOBRUNNER_PORT"])
    checks = 0
    while (sentence := await asyncio.to_thread(port_holder_sentence, host, port)) is not None:
        if checks == 0:
            log.error(
                f"the api cannot be restarted: {sentence}; jobrunner restarts it once the port"
                " is free",
                service=api.name,
                port=port,
            )
        checks += 1
        delay = retry.delay_after(checks, first=0.5, longest=PORT_CHECK_LONGEST_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return False
    if checks:
        log.warning(f"port {port} is free again: the api restarts", service=api.name, port=port)
    return True
