"""Starts jobrunner the way users do (``jobrunner up`` in a temporary state directory on a free
port) with the benchmark's job types, and finds its service processes for memory sampling."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from bench import natscount
from bench.nativetools import NativeTool, compile_paced, compile_sseclients
from jobrunner.embedded.scratch import new_scratch_dir
from jobrunner.embedded.serverprocess import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

JOB_TYPES = """
[job_types.bench_paced]
title = "Bench: paced lines with timestamps"
argv = {paced_argv}
cwd = "{root}"
timeout_seconds = 600

[job_types.bench_paced.parameters.rate]
type = "integer"
flag = "--rate"
minimum = 1
maximum = 100000
default = 100

[job_types.bench_paced.parameters.seconds]
type = "integer"
flag = "--seconds"
minimum = 0
maximum = 3600
default = 30

[job_types.bench_paced.parameters.delay]
type = "string"
flag = "--delay"
pattern = "^[0-9.]+$"
default = "0"

[job_types.bench_flood]
title = "Bench: 80-byte lines as fast as possible"
argv = ["{{python}}", "-m", "bench.tools.flood"]
cwd = "{root}"
timeout_seconds = 600

[job_types.bench_flood.parameters.lines]
type = "integer"
flag = "--lines"
minimum = 1
maximum = 10000000
default = 1000000

[job_types.bench_echo]
title = "Bench: one line, at once (no interpreter start-up in the way)"
argv = ["echo", "INFO dispatched"]
timeout_seconds = 60
"""


def write_job_types(directory: Path, paced: NativeTool) -> Path:
    path = directory / "bench_jobtypes.toml"
    # The Python tool goes through the argv template's {python}; the C tool is a path (a JSON
    # string is a TOML basic string).
    argv = ["{python}", *paced.argv[1:]] if paced.kind == "Python" else list(paced.argv)
    path.write_text(JOB_TYPES.format(root=ROOT, paced_argv=json.dumps(argv)))
    return path


class RunningSystem:
    """``jobrunner up`` as a child process; stopped with SIGTERM like Ctrl-C would."""

    def __init__(
        self,
        extra_env: dict[str, str] | None = None,
        paced: NativeTool | None = None,
        sse_clients: NativeTool | None = None,
    ) -> None:
        # The bench_paced job type's tool: C when this machine compiles it (bench/nativetools.py).
        self.paced = paced or compile_paced()
        # The viewers of the fan-out, catch-up and noisy-neighbour scenarios (bench/sseclients.py).
        self.sse_clients = sse_clients or compile_sseclients()
        self.tmp = new_scratch_dir("jobrunner-bench-")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.state_dir = self.tmp / "state"
        self.job_types = write_job_types(self.tmp, self.paced)
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.runtime: dict[str, str] = {}
        self.token: str | None = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "JOBRUNNER_JOB_TYPES_FILE": str(self.job_types),
                "JOBRUNNER_LOG_LEVEL": "warning",
                "JOBRUNNER_LOG_FORMAT": "json",
                "PYTHONPATH": str(ROOT),
                # 500 SSE clients share the bench's one token.
                "JOBRUNNER_MAX_STREAMS_PER_TOKEN": "2000",
                # The fan-out of 100 jobs at once runs them all at once.
                "JOBRUNNER_MAX_CONCURRENT_JOBS": "128",
            }
        )
        env.update(self.extra_env)
        if env.get(natscount.DIR_VARIABLE):
            # A counted run (bench/natscount): its sitecustomize ahead of the services' path.
            site = ROOT / "bench" / "natscount" / "site"
            env["PYTHONPATH"] = os.pathsep.join((str(site), str(ROOT)))
        return env

    def start(self, timeout: float = 120.0) -> None:
        if not self.has_token_command():
            # A product without tokens yet: nothing to authenticate with.
            self.extra_env["JOBRUNNER_AUTH"] = "false"
        log = (self.tmp / "up.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "jobrunner.cli",
                "up",
                "--port",
                str(self.port),
                "--state-dir",
                str(self.state_dir),
            ],
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jobrunner up exited; see {self.tmp / 'up.log'}")
            if self._healthy():
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"jobrunner up did not answer within {timeout} s")
        self.runtime = json.loads((self.state_dir / "runtime.json").read_text())
        self.token = self.create_token(self.env | self.runtime_env())
        # /health answers 200 on a first start before the projector has made the read models;
        # until then every read or POST answers 503 READ_MODELS_REBUILDING.
        while not self._read_models_ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the read models were not made within {timeout} s")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _read_models_ready(self) -> bool:
        request = urllib.request.Request(self.base_url + "/api/jobs?limit=1", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as error:
            if error.code == 503:
                return False
            raise
        except OSError:
            return False

    def token_headers(self, env: dict[str, str]) -> dict[str, str]:
        token = self.create_token(env)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def has_token_command(self) -> bool:
        result = subprocess.run(
            [PYTHON, "-m", "jobrunner.cli", "token", "create", "--help"],
            env=self.env,
            capture_output=True,
            cwd=ROOT,
            check=False,
        )
        return result.returncode == 0

    def create_token(self, env: dict[str, str]) -> str | None:
        """When the product has bearer tokens (``jobrunner token create``), the bench uses one."""
        if self.extra_env.get("JOBRUNNER_AUTH") == "false":
            return None
        result = subprocess.run(
            [PYTHON, "-m", "jobrunner.cli", "token", "create", "--role", "admin", "bench"],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        if result.returncode != 0 or not result.stdout.strip():
            raise RuntimeError(f"jobrunner token create failed: {result.stderr}")
        return result.stdout.strip().splitlines()[-1]

    def runtime_env(self) -> dict[str, str]:
        return {
            "JOBRUNNER_NATS_URL": self.runtime.get("nats_url", ""),
            "JOBRUNNER_DATABASE_URL": self.runtime.get("database_url", ""),
            "JOBRUNNER_PREFIX": self.runtime.get("prefix", "jobrunner"),
            "JOBRUNNER_STATE_DIR": str(self.state_dir),
        }

    @property
    def prefix(self) -> str:
        return self.runtime.get("prefix", "jobrunner")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def services(self) -> dict[str, psutil.Process]:
        """The api, runner and projector processes (children of ``jobrunner up``)."""
        assert self.proc is not None
        found: dict[str, psutil.Process] = {}
        for child in psutil.Process(self.proc.pid).children(recursive=False):
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            for name in ("api", "runner", "projector"):
                if cmd[-1:] == [name] and "jobrunner.cli" in cmd:
                    found[name] = child
        return found

    def processes_by_part(self) -> dict[str, list[psutil.Process]]:
        """Every process of the system by part: the services, nats-server and Postgres (all of
        its processes: backends, autovacuum, WAL writer); for CPU time per part."""
        assert self.proc is not None
        found: dict[str, list[psutil.Process]] = {}
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmd = child.cmdline()
                name = child.name()
            except psutil.Error:
                continue
            if "jobrunner.cli" in cmd and cmd[-1] in ("api", "runner", "projector", "notifier"):
                part = cmd[-1]
            elif any(arg.endswith("guardian_main.py") for arg in cmd):
                part = "guardian"  # the runner's tool guardian (guardian.py)
            elif "nats-server" in name:
                part = "nats-server"
            elif name.startswith("postgres") or (cmd and cmd[0].startswith("postgres")):
                part = "postgres"
            else:
                continue
            found.setdefault(part, []).append(child)
        return found

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) each part has used so far (processes alive now). Postgres
        counts its ended backends too (their time joins the postmaster's once it reaped them):
        without them a run whose backends ended showed Postgres using less than nothing."""
        out: dict[str, float] = {}
        for part, procs in self.processes_by_part().items():
            for proc in procs:
                try:
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                used = times.user + times.system
                if part == "postgres":
                    used += times.children_user + times.children_system
                out[part] = out.get(part, 0.0) + used
        return out

    def tools_cpu_seconds(self) -> float:
        """CPU seconds (user + system) of the tools the runner has run and waited for so far:
        a child's time joins its parent's once it is waited for."""
        try:
            times = self.services()["runner"].cpu_times()
        except (KeyError, psutil.Error):
            return 0.0
        return float(times.children_user + times.children_system)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


class MemorySampler:
    """Samples the resident memory of processes in a thread; keeps the peak and a series."""

    def __init__(self, processes: dict[str, psutil.Process], interval: float = 0.1) -> None:
        self.processes = processes
        self.interval = interval
        self.peak: dict[str, int] = dict.fromkeys(processes, 0)
        self.series: dict[str, list[tuple[float, int]]] = {name: [] for name in processes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            for name, proc in self.processes.items():
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak[name], rss)
                self.series[name].append((time.monotonic() - start, rss))
            self._stop.wait(self.interval)

    def mib(self, name: str) -> float:
        return round(self.peak[name] / 2**20, 1)

    def profile(self, name: str, points: int = 10) -> list[float]:
        """Resident MiB at ``points`` evenly spaced moments of the run: flat or growing."""
        s = self.series[name]
        if not s:
            return []
        step = max(1, len(s) // points)
        return [round(rss / 2**20, 1) for _, rss in s[::step]]

    def start_end(self, name: str) -> tuple[float, float]:
        s = self.series[name]
        if not s:
            return (0.0, 0.0)
        return (round(s[0][1] / 2**20, 1), round(s[-1][1] / 2**20, 1))
