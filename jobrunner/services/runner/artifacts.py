"""A job's output directory, and storing what the job left in it as the job's artifacts.

Each job gets a fresh directory ``<work dir>/jobrunner-<job id>-<random>/out``, named to the
tool as ``JOBRUNNER_OUTPUT_DIR``. When the job ends (however it ends, before its terminal
status is published) every regular file in it is stored in the artifacts object store and
announced with an ``ArtifactStored`` event; then the whole directory goes. The work dir belongs to
one runner host: a runner starting removes what a killed predecessor left there.

What is never stored, each named in the job's log as an ERROR line:
- symbolic links and special files (never followed: a link to /etc/passwd stays a link);
- names that are not safe (``artifactnames.check_new_name``);
- files written next to the output directory (``$JOBRUNNER_OUTPUT_DIR/../x``): the directory sits
  one level down in a folder of its own so such a file lands there, is seen and is refused;
- a file over ``artifact_max_file_bytes``, or one that would take the job's stored bytes over
  ``artifact_max_job_bytes``: the job then ends ARTIFACT_TOO_LARGE if it would have completed.

Files are opened one folder at a time from the output directory, each part with ``O_NOFOLLOW``,
and checked again on the open descriptor: a link put in place of the file, of a folder on its
way or of the output directory itself, before the listing or between the listing and the upload,
is never followed. A file is read up to the size it had when opened (something outside the job
still writing cannot push it over a limit).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog
from nats.js import JetStreamContext

from jobrunner.common import artifactnames, artifactstore, metrics
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names

log = structlog.get_logger()

OUTPUT_ENV = "JOBRUNNER_OUTPUT_DIR"
_PREFIX = "jobrunner-"


@dataclass(frozen=True)
class OutputDirectory:
    """The folder of one job: ``root`` is removed at the end, ``path`` is given to the tool."""

    root: Path
    path: Path

    @classmethod
    def create(cls, settings: Settings, job_id: str) -> OutputDirectory:
        base = work_dir(settings)
        base.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{job_id[:32]}-", dir=base))
        path = root / "out"
        path.mkdir(mode=0o700)
        return cls(root=root, path=path)

    async def remove(self) -> None:
        await asyncio.to_thread(self._remove)

    def _remove(self) -> None:
        try:
            # Most jobs leave nothing: two calls, where rmtree opens, lists and checks each
            # folder first (about 0.1 ms of the runner's CPU per job).
            os.rmdir(self.path)
            os.rmdir(self.root)
        except OSError:
            shutil.rmtree(self.root, ignore_errors=True)


def work_dir(settings: Settings) -> Path:
    """Where the runner makes output directories: ``artifact_work_dir``, else
    ``<state_dir>/outputs`` (a runner host's own, like the record of the tools it started)."""
    return Path(settings.artifact_work_dir or Path(settings.state_dir) / "outputs")


def remove_leftovers(settings: Settings) -> int:
    """At a runner's start: remove the output directories a runner killed mid-job left behind
    (its jobs ended RUNNER_LOST; their files were never stored). Returns how many went."""
    base = work_dir(settings)
    removed = 0
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return 0
    except OSError as exc:
        # A work dir under a file, or one we may not read: the runner starts all the same, and
        # each job fails SPAWN_FAILED with a sentence naming the setting (output_directory).
        log.warning("artifact_work_dir unusable", path=str(base), error=repr(exc))
        return 0
    for entry in entries:
        if entry.name.startswith(_PREFIX) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    return removed


@dataclass(frozen=True)
class Candidate:
    name: str  # relative to ``folder``, /-separated
    folder: Path  # the job's output directory


_NO_LINKS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_beneath(folder: Path, name: str) -> int:
    """A descriptor of ``folder/name`` opened without following a symbolic link on the way: the
    folder, each subfolder and the file are opened with ``O_NOFOLLOW`` relative to the one
    before. A link anywhere raises ``OSError`` (ELOOP or ENOTDIR)."""
    *subfolders, filename = name.split("/")
    fd = os.open(folder, _NO_LINKS | os.O_DIRECTORY)
    try:
        for part in subfolders:
            inner = os.open(part, _NO_LINKS | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(filename, _NO_LINKS | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)


@dataclass
class Listing:
    files: list[Candidate] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # sentences for the job's log


def _shown(name: str) -> str:
    """A name as the log shows it: quoted, control characters and bad bytes escaped."""
    return ascii(name) if not name.isprintable() else repr(name)


def list_output(directory: OutputDirectory) -> Listing:
    """Every file to store, sorted by name, and a sentence for each entry refused."""
    listing = Listing()
    for entry in sorted(os.scandir(directory.root), key=lambda e: e.name):
        if entry.name != directory.path.name:
            listing.skipped.append(
                f"{_shown(entry.name)} was written outside {OUTPUT_ENV}; not stored"
            )
    if directory.path.is_symlink() or not directory.path.is_dir():
        # The tool replaced the folder itself: a link is never followed (it could point
        # anywhere the runner may read), a file is no folder of files.
        kind = "a symbolic link" if directory.path.is_symlink() else "no folder"
        listing.skipped.append(f"{OUTPUT_ENV} itself is {kind}; not followed, nothing stored")
        return listing
    _walk(directory.path, "", directory.path, listing)
    listing.files.sort(key=lambda c: c.name)
    return listing


def _walk(folder: Path, prefix: str, top: Path, listing: Listing) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        listing.skipped.append(f"folder {_shown(prefix or '.')} cannot be read ({exc.strerror})")
        return
    for entry in entries:
        name = f"{prefix}{entry.name}"
        if entry.is_symlink():
            listing.skipped.append(f"{_shown(name)} is a symbolic link; not followed, not stored")
        elif entry.is_dir(follow_symlinks=False):
            _walk(Path(entry.path), f"{name}/", top, listing)
        elif not entry.is_file(follow_symlinks=False):
            listing.skipped.append(f"{_shown(name)} is not a regular file; not stored")
        else:
            try:
                listing.files.append(Candidate(artifactnames.check_new_name(name), top))
            except artifactnames.BadArtifactName as exc:
                listing.skipped.append(
                    f"{_shown(name)} is no safe artifact name ({exc}); not stored"
                )


@dataclass
class StoreResult:
    stored: list[events.ArtifactStored] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)
    not_stored: list[str] = field(default_factory=list)  # refused by NATS for good
    stopped: bool = False  # the lease was lost: the rest was not stored


def _name_digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]


def _size_text(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class ArtifactCollector:
    """Stores a job's output directory as its artifacts; reports through ``say`` (the job's
    log) and ``publish`` (its events, retried by the journal)."""

    def __init__(
        self,
        js: JetStreamContext,
        names: Names,
        settings: Settings,
        job_id: str,
        say: Callable[[str], None],
        publish: Callable[[events.ArtifactStored], Awaitable[None]],
        should_stop: Callable[[], bool],
    ) -> None:
        self.js = js
        self.names = names
        self.settings = settings
        self.job_id = job_id
        self.say = say
        self.publish = publish
        self.should_stop = should_stop

    async def collect(self, directory: OutputDirectory) -> StoreResult:
        listing = await asyncio.to_thread(list_output, directory)
        for sentence in listing.skipped:
            self.say(f"artifact {sentence}")
        result = StoreResult()
        job_bytes = 0
        for candidate in listing.files:
            try:
                job_bytes += await self._store(candidate, job_bytes, result)
            except artifactstore.UploadStopped:
                result.stopped = True
                self.say("artifacts: the job's lease was lost; the remaining files were not stored")
                break
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    self.say(
                        f"artifact {_shown(candidate.name)}: a symbolic link (or a file) took the "
                        "place of it or of a folder on its way while it was collected; not "
                        "followed, not stored"
                    )
                else:
                    self.say(f"artifact {_shown(candidate.name)} cannot be read ({exc.strerror})")
            except Exception as exc:
                # NATS refused it for good (the bucket full, a permission): the job must still
                # end, and say which file is missing.
                result.not_stored.append(candidate.name)
                log.error("artifact not stored", name=candidate.name, error=repr(exc))
                self.say(f"artifact {_shown(candidate.name)} could not be stored: {exc}")
        return result

    async def _store(self, candidate: Candidate, job_bytes: int, result: StoreResult) -> int:
        """Store one file; the bytes it added to the job's total."""
        fd = open_beneath(candidate.folder, candidate.name)
        with os.fdopen(fd, "rb") as source:
            info = os.fstat(source.fileno())
            if not stat.S_ISREG(info.st_mode):
                self.say(f"artifact {_shown(candidate.name)} is not a regular file; not stored")
                return 0
            size = info.st_size
            file_limit = self.settings.artifact_max_file_bytes
            job_limit = self.settings.artifact_max_job_bytes
            if size > file_limit:
                result.too_large.append(candidate.name)
                self.say(
                    f"artifact {_shown(candidate.name)} not stored: {_size_text(size)} is over "
                    f"the limit of {_size_text(file_limit)} per file (artifact_max_file_bytes)"
                )
                return 0
            if job_bytes + size > job_limit:
                result.too_large.append(candidate.name)
                self.say(
                    f"artifact {_shown(candidate.name)} not stored: it would take the job's "
                    f"artifacts over {_size_text(job_limit)} (artifact_max_job_bytes)"
                )
                return 0
            object_name = self.names.artifact_object(self.job_id, candidate.name)
            stored = await artifactstore.put_file(
                self.js, self.names, object_name, source, size, self.should_stop
            )
        event = events.ArtifactStored(
            job_id=self.job_id,
            # One id per job and name: a re-published announcement is stored once.
            event_id=f"{self.job_id}-artifact-{_name_digest(candidate.name)}",
            occurred_at=datetime.now(UTC),
            name=candidate.name,
            size=stored.size,
            content_type=artifactnames.content_type(candidate.name),
            sha256=stored.sha256,
            object_name=object_name,
        )
        await self.publish(event)
        result.stored.append(event)
        metrics.ARTIFACTS_STORED.inc()
        metrics.ARTIFACT_BYTES.inc(stored.size)
        log.info("artifact stored", name=candidate.name, size=stored.size)
        return stored.size
