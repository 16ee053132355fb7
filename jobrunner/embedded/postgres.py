"""An embedded Postgres: the machine's initdb/postgres binaries in a data directory.

Postgres refuses to run as root. When we are root, the cluster runs as the ``postgres`` system
user (Debian creates it with the server packages); the data directory is handed to that user, and
the directories above it are made passable for it (or the start stops with a sentence naming the
one that is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import grp
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from jobrunner.embedded import processtree
from jobrunner.embedded.serverprocess import (
    ServerProcess,
    ServerStartError,
    as_user,
    free_port,
)

SUPERUSER = "jobrunner"
# How long ``EmbeddedPostgres.kill`` waits for the server's processes to end after SIGKILL.
KILL_WAIT_SECONDS = 30.0


class PostgresNotEnded(Exception):
    """Processes of a killed Postgres still ran past the kill's bound: the next start on its
    data directory would fail on their shared memory."""

    def __init__(self, data_dir: Path, pids: list[int], seconds: float) -> None:
        self.pids = pids
        super().__init__(
            f"Postgres processes {', '.join(map(str, pids))} still run {seconds:g} s after "
            f"SIGKILL (held in the kernel: a long disk wait?); a start on {data_dir} fails "
            "until they have ended (pre-existing shared memory block ... is still in use)"
        )


def postgres_bindir() -> Path:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return Path(candidates[-1]).parent
    try:
        # The pgserver wheel ships a Postgres build: the fallback when the machine has none.
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bundled / "initdb").exists():
            return bundled
    except ImportError:
        pass
    raise ServerStartError(
        "Postgres binaries (initdb, postgres) not found: install them "
        "(Debian: apt-get install postgresql) or pip install pgserver"
    )


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerStartError(
            "running as root, and Postgres refuses to: create a 'postgres' user "
            "(useradd --system postgres) or run jobrunner as an ordinary user"
        ) from None
    return "postgres"


def make_passable(directory: Path, user: str, own_from: Path | None = None) -> None:
    """Let ``user`` pass through ``directory`` and every directory above it.

    Directories from ``own_from`` (default: the parent of ``directory``, jobrunner's state
    directory) down are jobrunner's: they get the search bit for others (pass through, not list;
    the secrets inside are mode 0600). A directory above them that the user cannot pass stops the
    start with a sentence naming it: it is not jobrunner's to open up.
    """
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    own_from = (own_from or directory.parent).resolve()
    directory = directory.resolve()
    for current in [directory, *directory.parents]:
        info = current.stat()
        if info.st_uid == entry.pw_uid:
            passable = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid in groups:
            passable = bool(info.st_mode & stat.S_IXGRP)
        else:
            passable = bool(info.st_mode & stat.S_IXOTH)
        if passable:
            continue
        if current == own_from or own_from in current.parents:
            current.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
            continue
        raise ServerStartError(
            f"Postgres runs as the {user!r} user (jobrunner runs as root), and that user cannot "
            f"pass through {current} (mode {stat.S_IMODE(info.st_mode):o}): choose a state "
            f"directory outside it with --state-dir (for example /var/lib/jobrunner), or let it "
            f"pass with `chmod o+x {current}`"
        )


class EmbeddedPostgres(ServerProcess):
    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        database: str = "jobrunner",
        settings: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env``: the server's environment (None: this process's)."""
        self.data_dir = data_dir
        self.port = port or free_port()
        self.database = database
        self.user = _run_as()
        self.password_file = data_dir.parent / "pg-password"
        bindir = postgres_bindir()
        self.bindir = bindir
        options = {"fsync": "on", "max_connections": "200", **(settings or {})}
        super().__init__(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D",
                str(data_dir),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={data_dir}",
                *(arg for name, value in options.items() for arg in ("-c", f"{name}={value}")),
            ],
            log_file=data_dir.parent / "postgres.log",
            ready_text="database system is ready to accept connections",
            # SIGINT is Postgres' "fast shutdown": roll back, checkpoint, exit.
            stop_signal=signal.SIGINT,
            user=self.user,
            port_flag=None if port else "-p",
            env=env,
        )

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.user:
            make_passable(self.data_dir.parent, self.user)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        super().start(timeout)
        asyncio.run(self._create_database())

    def _initdb(self) -> None:
        if not self.password_file.exists():
            self.password_file.write_text(secrets.token_urlsafe(24))
            self.password_file.chmod(0o600)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pwfile = self.data_dir.parent / ".initdb-pw"
        shutil.copy(self.password_file, pwfile)
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            self.data_dir.chmod(0o700)
        result = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale",
                "C",
            ],
            **as_user(self.user),
            capture_output=True,
            text=True,
            check=False,
        )
        pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ServerStartError(
                f"initdb failed in {self.data_dir}"
                + (
                    " (is the state directory reachable by the 'postgres' user?)"
                    if self.user
                    else ""
                )
                + f":\n{result.stderr.strip()}"
            )

    def kill(self, timeout: float = KILL_WAIT_SECONDS) -> None:
        """Hard stop of every process of the server at once, as a machine's crash would.

        Each backend leads a process group of its own, out of reach of a kill of the
        postmaster's group; one busy with a long statement (a COPY of lines) notices the
        postmaster's death only when it next waits, and meanwhile holds the shared memory: the
        next start refused ("pre-existing shared memory block ... is still in use"). So every
        process attached to the server's shared memory is killed, the postmaster included, and
        waited for: also when the postmaster had died on its own before (its backends are
        init's then), which is when they are likeliest left. Those still running after
        ``timeout`` seconds (SIGKILL cannot be refused, only delayed by a disk wait) raise
        ``PostgresNotEnded``, naming them."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Stopped, it does not answer the deaths below with a crash recovery that starts
            # processes anew (a fork already under way still ends: kill_attached looks again).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGSTOP)
        segment = self._shared_memory()
        still_running = [] if segment is None else processtree.kill_attached(segment, timeout)
        super().kill()  # the postmaster reaped (or, with no shared memory yet, killed now)
        if still_running:
            raise PostgresNotEnded(self.data_dir, still_running, timeout)
        self._forget_lock(self.proc.pid)

    def _forget_lock(self, reaped: int) -> None:
        """Remove the lock files a killed postmaster (``reaped``, by us) left: postmaster.pid
        and its socket's ``.s.PGSQL.<port>.lock`` (in the data directory, where it listens).
        Once its pid is reused by a process of Postgres' user, the next start would take
        them for a live server's and refuse for good. Only that postmaster's (their first
        line), and only with nothing attached any more (``kill`` makes sure): another's are
        left to Postgres."""
        for lock in [self.data_dir / "postmaster.pid", *self.data_dir.glob(".s.PGSQL.*.lock")]:
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(lock.read_text().splitlines()[0]) == reaped:
                    lock.unlink()

    def _shared_memory(self) -> processtree.Segment | None:
        """The shared memory segment this server's postmaster created, as its postmaster.pid
        says (line 7: key and id); None before it wrote it, or when the file is another
        postmaster's (a start that failed on a running server's lock)."""
        assert self.proc is not None
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            if int(lines[0]) != self.proc.pid:
                return None
            key, shmid = (int(field) for field in lines[6].split())
        except (OSError, IndexError, ValueError):
            return None
        return processtree.Segment(key, shmid)

    @contextlib.asynccontextmanager
    async def _superuser_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """The superuser on the maintenance database ``postgres``, to create databases."""
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            database="postgres",
        )
        try:
            yield conn
        finally:
            await conn.close()

    async def _create_database(self) -> None:
        async with self._superuser_connection() as conn:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", self.database
            )
            if not exists:
                await conn.execute(f'CREATE DATABASE "{self.database}"')

    async def create_database(self, name: str) -> str:
        """A fresh database in this cluster (tests isolate by database); returns its URL."""
        async with self._superuser_connection() as conn:
            await conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{name}"
