"""The read-model version is raised whenever what defines the read models changes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from jobrunner.common import readmodelversion
from jobrunner.services import projector

PROJECTOR = Path(projector.__file__).parent
# The files that decide which tables exist and what rows the projections write into them.
DEFINING_FILES = (
    "schema.sql",
    "indexes.sql",
    "search_index.sql",
    "projections.py",
    "batchcounts.py",
    "store.py",
    "timestamps.py",  # the instants stored for the events' times
    "nulfree.py",  # the events whose strings are stored as decoded
)


def readmodel_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in DEFINING_FILES:
        digest.update(name.encode() + b"\0")
        digest.update((PROJECTOR / name).read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()


def test_a_change_to_the_read_models_decides_their_version() -> None:
    """Changing the tables or the projections without deciding on the version fails here."""
    found = readmodel_fingerprint()
    assert found == readmodelversion.READMODEL_FINGERPRINT, (
        f"{', '.join(DEFINING_FILES)} (in services/projector) changed. If the tables, or the rows "
        "the projections write, differ from before, raise READMODEL_VERSION in "
        "common/readmodelversion.py (older databases are then rebuilt from the stream on start; "
        "README 'Upgrading'). Either way set READMODEL_FINGERPRINT there to "
        f"{found!r}."
    )


def test_the_rebuild_sentence_names_the_command() -> None:
    """A projector that may not rebuild older read models tells the one command to run."""
    sentence = readmodelversion.rebuild_sentence(readmodelversion.UNVERSIONED)
    assert "`jobrunner replay`" in sentence
    assert "before versions were recorded" in sentence
    assert "\n" not in sentence


def test_the_newer_sentence_names_both_versions() -> None:
    """A database from a newer jobrunner is refused naming its version and the one understood."""
    sentence = readmodelversion.newer_sentence(readmodelversion.READMODEL_VERSION + 1)
    assert str(readmodelversion.READMODEL_VERSION + 1) in sentence
    assert "newer jobrunner" in sentence
