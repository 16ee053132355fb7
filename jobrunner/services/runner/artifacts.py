"""A job's output directory, and storing what the job left in it as the job's artifacts.

Each job gets a fresh directory ``<work dir>/jobrunner-<job id>-<random>/out``, named to the
tool as ``JOBRUNNER_OUTPUT_DIR``. When the job ends (however it ends, before its terminal
status is published) every regular file in it is stored in the artifacts object store and
announced with an ``ArtifactStored`` event; then the whole directory goes. The work dir belongs to
one runner host: a runner starting removes what a killed predecessor left there, but not the
folders of jobs still running (each locked, ``flock``, by its runner while the job lasts), so
runners on one host may share it.

What is never stored, each named in the job's log as an ERROR line:
- symbolic links and special files (never followed: a link to /etc/passwd stays a link);
- names that are not safe (``artifactnames.check_new_name``);
- files written next to the output directory (``$JOBRUNNER_OUTPUT_DIR/../x``): the directory sits
  one level down in a folder of its own so such a file lands there, is seen and is refused;
- a file over ``artifact_max_file_bytes``, or one that would take the job's stored bytes over
  ``artifact_max_job_bytes``: the job then ends ARTIFACT_TOO_LARGE if it would have completed.

The output directory and its parent are opened once, before the tool starts, and everything
after goes through those descriptors: the listing opens each subfolder by name relative to its
parent with ``O_NOFOLLOW``, each file is opened one folder at a time the same way and checked
again on the open descriptor, and the removal empties the held folder and removes it by name only
if that name still stands for it. So a link put in place of a file, of a folder on its way, of
the output directory or of its parent, at any time, is never followed; an output directory moved
away or replaced stores nothing (the job's log says so). A file is read up to the size it had
when opened (something outside the job still writing cannot push it over a limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Awaitable, Callable, Iterator
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
_OUT = "out"
_NO_LINKS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_FOLDER = _NO_LINKS | os.O_DIRECTORY
CREATE_TRIES = 3


@dataclass(frozen=True)
class OutputDirectory:
    """The folder of one job: ``root`` is removed at the end, ``path`` is given to the tool.

    ``root_fd`` and ``fd`` are descriptors of both, opened before the tool starts: the runner
    lists, reads and removes through them, never through the paths, which the tool may have
    renamed away and replaced with a link (to another job's folder, say). ``remove`` closes them.
    """

    root: Path
    path: Path
    root_fd: int
    fd: int

    @classmethod
    def create(cls, settings: Settings, job_id: str) -> OutputDirectory:
        base = work_dir(settings)
        for _ in range(CREATE_TRIES - 1):
            # FileNotFoundError / BlockingIOError: another runner on this work dir, starting,
            # took the fresh folder for a leftover in the instant before it was locked.
            with contextlib.suppress(FileNotFoundError, BlockingIOError):
                return cls._create(base, job_id)
        return cls._create(base, job_id)

    @classmethod
    def _create(cls, base: Path, job_id: str) -> OutputDirectory:
        base.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{job_id[:32]}-", dir=base))
        root_fd = os.open(root, _FOLDER)
        try:
            # Locked for the job's life (``root_fd`` stays open until ``remove``): a runner
            # starting beside this one on the same work dir leaves it alone
            # (``remove_leftovers``); a killed runner's locks go with its descriptors.
            fcntl.flock(root_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.mkdir(_OUT, mode=0o700, dir_fd=root_fd)
            fd = os.open(_OUT, _FOLDER, dir_fd=root_fd)
        except BaseException:
            os.close(root_fd)
            with contextlib.suppress(Exception):
                _remove_folder(base, root.name)
            raise
        return cls(root=root, path=root / _OUT, root_fd=root_fd, fd=fd)

    def replaced(self) -> str | None:
        """How ``path`` no longer names the folder the runner made (None while it does)."""
        try:
            now = os.stat(_OUT, dir_fd=self.root_fd, follow_symlinks=False)
        except FileNotFoundError:
            return "was removed or moved away"
        if stat.S_ISLNK(now.st_mode):
            return "itself is a symbolic link; not followed"
        if not stat.S_ISDIR(now.st_mode):
            return "itself is no folder"
        if not os.path.samestat(now, os.fstat(self.fd)):
            return "itself is another folder than the one the runner made; not read"
        return None

    async def remove(self) -> None:
        await asyncio.to_thread(self._remove)

    def _remove(self) -> None:
        try:
            empty_folder(self.root_fd)
            # The one step by name: the folder the runner made is removed only if its name in
            # the work dir still stands for it (rmdir removes nothing but an empty folder).
            base = os.open(self.root.parent, _FOLDER & ~os.O_NOFOLLOW)
            try:
                _rmdir_if_same(base, self.root.name, os.fstat(self.root_fd))
            finally:
                os.close(base)
        except Exception as exc:
            # Whatever the tool left (a tree too deep, a folder it made unreadable), the job
            # must still end: the removal is logged, never raised.
            log.warning("output directory not removed", path=str(self.root), error=repr(exc))
        finally:
            os.close(self.fd)
            os.close(self.root_fd)


def _rmdir_if_same(parent_fd: int, name: str, folder: os.stat_result) -> None:
    """rmdir ``name`` in ``parent_fd`` only if it is still ``folder`` (never through a link)."""
    if os.path.samestat(os.stat(name, dir_fd=parent_fd, follow_symlinks=False), folder):
        os.rmdir(name, dir_fd=parent_fd)


def empty_folder(folder_fd: int) -> None:
    """Remove everything in the folder ``folder_fd`` is open on, never following a link, without
    recursion and holding one descriptor at a time, however deep the tree (a tool's ``mkdir d;
    cd d`` loop: ``shutil.rmtree`` recurses once per level and raises RecursionError near 1,000).

    It goes down into the first folder that is not empty (opened by name relative to its parent
    with ``O_NOFOLLOW``), and back up through ``..`` once that folder is empty, checking that
    ``..`` is the folder it came from (same device and inode) and that the name still stands for
    the folder before the rmdir. Most jobs leave nothing: one listing. Raises ``OSError`` if
    something could not be removed (the rest is removed all the same) or the tree was moved
    while it was removed."""
    fd = os.dup(folder_fd)
    # Per level below the top: the parent's stat and this folder's name and stat.
    path: list[tuple[os.stat_result, str, os.stat_result]] = []
    stuck: set[tuple[int, int]] = set()  # folders that could not be emptied: not entered again
    failed: OSError | None = None
    try:
        while True:
            inner = None
            for entry in list(os.scandir(fd)):
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.name, dir_fd=fd)
                        continue
                    if stuck and (entry.stat(follow_symlinks=False).st_dev, entry.inode()) in stuck:
                        continue
                    try:
                        os.rmdir(entry.name, dir_fd=fd)
                        continue
                    except FileNotFoundError:
                        continue
                    except OSError:
                        pass  # not empty (or refused): emptied first, tried again on the way up
                    inner = os.open(entry.name, _FOLDER, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    failed = exc
                    if entry.is_dir(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            info = entry.stat(follow_symlinks=False)
                            stuck.add((info.st_dev, info.st_ino))
                    continue
                path.append((os.fstat(fd), entry.name, os.fstat(inner)))
                os.close(fd)
                fd = inner
                break
            if inner is not None:
                continue  # list the folder just entered
            if not path:
                break  # the top is as empty as it can be made
            parent, name, here = path.pop()
            above = os.open("..", _FOLDER, dir_fd=fd)
            os.close(fd)
            fd = above
            if not os.path.samestat(os.fstat(fd), parent):
                raise OSError(errno.ESTALE, "a folder was moved while it was being removed")
            try:
                _rmdir_if_same(fd, name, here)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed = exc
                stuck.add((here.st_dev, here.st_ino))
    finally:
        os.close(fd)
    if failed is not None:
        raise failed


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
            try:
                with _locked_unless_in_use(entry.path) as free:
                    if not free:
                        continue  # a job of another runner on this work dir
                    _remove_folder(base, entry.name)
                removed += 1
            except Exception as exc:
                # The runner starts all the same; what is left is tried again at the next start.
                log.warning("output directory not removed", path=entry.path, error=repr(exc))
    return removed


@contextlib.contextmanager
def _locked_unless_in_use(path: str) -> Iterator[bool]:
    """False when a live runner holds the folder's lock (its job is running), else True with
    the lock held until the block ends."""
    fd = os.open(path, _FOLDER)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _remove_folder(parent: Path, name: str) -> None:
    """Remove the folder ``name`` in ``parent`` and all in it, never following a link."""
    parent_fd = os.open(parent, _FOLDER & ~os.O_NOFOLLOW)
    try:
        fd = os.open(name, _FOLDER, dir_fd=parent_fd)
        try:
            empty_folder(fd)
            _rmdir_if_same(parent_fd, name, os.fstat(fd))
        finally:
            os.close(fd)
    finally:
        os.close(parent_fd)


@dataclass(frozen=True)
class Candidate:
    name: str  # relative to ``folder_fd``, /-separated
    folder_fd: int  # the job's output directory (``OutputDirectory.fd``)


def open_beneath(folder_fd: int, name: str) -> int:
    """A descriptor of ``name`` in the folder ``folder_fd`` is open on, opened without following
    a symbolic link on the way: each subfolder and the file are opened with ``O_NOFOLLOW``
    relative to the one before. A link anywhere raises ``OSError`` (ELOOP or ENOTDIR)."""
    *subfolders, filename = name.split("/")
    fd = os.dup(folder_fd)
    try:
        for part in subfolders:
            inner = os.open(part, _FOLDER, dir_fd=fd)
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
    for entry in sorted(os.scandir(directory.root_fd), key=lambda e: e.name):
        if entry.name != _OUT:
            listing.skipped.append(
                f"{_shown(entry.name)} was written outside {OUTPUT_ENV}; not stored"
            )
    replaced = directory.replaced()
    if replaced is not None:
        # The tool moved the folder away or put something in its place: what stands there is
        # never followed (a link could point anywhere the runner may read).
        listing.skipped.append(f"{OUTPUT_ENV} {replaced}; nothing stored")
        return listing
    _walk(directory.fd, "", directory.fd, listing)
    listing.files.sort(key=lambda c: c.name)
    return listing


def _walk(folder_fd: int, prefix: str, top_fd: int, listing: Listing) -> None:
    """List the folder ``folder_fd`` is open on; each subfolder is opened by name relative to it
    with ``O_NOFOLLOW``, so a subfolder swapped for a link after it was listed is not walked."""
    try:
        entries = sorted(os.scandir(folder_fd), key=lambda e: e.name)
    except OSError as exc:
        listing.skipped.append(f"folder {_shown(prefix or '.')} cannot be read ({exc.strerror})")
        return
    for entry in entries:
        name = f"{prefix}{entry.name}"
        if entry.is_symlink():
            listing.skipped.append(f"{_shown(name)} is a symbolic link; not followed, not stored")
        elif entry.is_dir(follow_symlinks=False):
            if len(name) + len("/x") > events.MAX_ARTIFACT_NAME_CHARS:
                # Every file below (``name/x`` at the shortest) would be refused for its name;
                # the walk stops (it holds one descriptor per level).
                listing.skipped.append(f"folder {_shown(name)} is too deep; not stored")
                continue
            try:
                inner = os.open(entry.name, _FOLDER, dir_fd=folder_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    listing.skipped.append(
                        f"folder {_shown(name)} was replaced by a symbolic link (or a file) "
                        "while it was listed; not followed, not stored"
                    )
                else:
                    listing.skipped.append(f"folder {_shown(name)} cannot be read ({exc.strerror})")
                continue
            try:
                _walk(inner, f"{name}/", top_fd, listing)
            finally:
                os.close(inner)
        elif not entry.is_file(follow_symlinks=False):
            listing.skipped.append(f"{_shown(name)} is not a regular file; not stored")
        else:
            try:
                listing.files.append(Candidate(artifactnames.check_new_name(name), top_fd))
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
        fd = open_beneath(candidate.folder_fd, candidate.name)
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
