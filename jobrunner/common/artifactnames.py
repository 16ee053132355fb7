"""Artifact names: which ones are stored and served, their content type and download filename.

A name is the file's path relative to the job's output directory, ``/``-separated. It ends up in
URLs, ZIP entries and ``Content-Disposition`` headers, and a ZIP is unpacked on machines we do not
know, so a name that could step out of the folder it is unpacked into is never stored: no
absolute path, no ``.`` or ``..`` part, no empty part, no backslash (a separator on Windows), no
control characters, text that is valid Unicode. A name about to be stored must also unpack on
Windows: none of ``< > : " | ? *``, no part ending in a dot or a space, no device name (``CON``,
``nul.txt``). Names stored before such a rule keep downloading: serving checks ``check_name`` only.
"""

from __future__ import annotations

import mimetypes
import re

from jobrunner.common import bidicontrols
from jobrunner.contracts.events import MAX_ARTIFACT_NAME_CHARS

MAX_PART_BYTES = 255  # what common file systems allow for one file name
# The whole name in UTF-8, for a name about to be stored (check_new_name). The object's
# description is stored on a subject holding the name in base64 (4/3 as long), and a NATS server
# closes the connection of a client whose command line passes 4 KiB: a longer name (1,024
# characters of 4 bytes fit in 255-byte parts) cut the runner off NATS for good, its job never
# ending. 2,048 bytes leave room for the prefix. Not a rule of check_name: names up to ~2,900
# bytes were stored before it, and their downloads (the subject in a request's body, not its
# control line) still work.
MAX_NAME_BYTES = 2048
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9_.-]+")
# What Windows cannot hold in a file or folder name (backslash and control characters are
# refused for every name already): a ZIP with ``q?.csv`` fails to unpack there, or its tool
# renames the file. Refused for names about to be stored only (check_new_name).
_NOT_ON_WINDOWS = re.compile(r'[<>:"|?*]')
# The device names Windows reserves, whatever the extension (``CON.txt``, ``nul.tar.gz``) and
# the case, also with spaces before the extension (Windows drops them). ¹²³ are what Windows
# reads as the digits 1-3 there. The rules of Python 3.13's ``ntpath.isreserved``: a name whose
# part before the first dot, trailing spaces dropped, is one of its ``_reserved_names``
# (CONIN$ and CONOUT$, the console's input and output, included).
_RESERVED_ON_WINDOWS = re.compile(
    r"(CON|CONIN\$|CONOUT\$|PRN|AUX|NUL|(COM|LPT)[1-9\u00b9\u00b2\u00b3]) *(\..*)?",
    re.IGNORECASE | re.DOTALL,
)


class BadArtifactName(ValueError):
    """The name cannot be an artifact's; ``str()`` says why, for the job's log or an API error."""


def check_name(name: str) -> str:
    """``name`` unchanged when it is a safe artifact name; raises :class:`BadArtifactName`."""
    if not name:
        raise BadArtifactName("the name is empty")
    if len(name) > MAX_ARTIFACT_NAME_CHARS:
        raise BadArtifactName(f"the name is longer than {MAX_ARTIFACT_NAME_CHARS} characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        # A file name that is no valid UTF-8 reaches Python with surrogate escapes.
        raise BadArtifactName("the name is not valid UTF-8") from None
    if _CONTROL.search(name):
        raise BadArtifactName("the name holds control characters")
    if "\\" in name:
        raise BadArtifactName("the name holds a backslash")
    if name.startswith("/"):
        raise BadArtifactName("the name is an absolute path")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise BadArtifactName("the name has an empty, '.' or '..' part")
        if len(part.encode("utf-8")) > MAX_PART_BYTES:
            raise BadArtifactName(f"a part of the name is longer than {MAX_PART_BYTES} bytes")
    return name


def check_new_name(name: str) -> str:
    """``check_name`` for a name about to be stored (runner, upload): also at most
    ``MAX_NAME_BYTES`` in UTF-8, and no bidirectional override (a name stored before this rule
    still downloads: ``check_name`` leaves them be)."""
    check_name(name)
    if (bidi := bidicontrols.first_in(name)) is not None:
        raise BadArtifactName(
            f"the name holds a bidirectional override ({bidi}; none of U+202A-U+202E, "
            "U+2066-U+2069 is allowed), which makes it read as another name"
        )
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise BadArtifactName(f"the name is longer than {MAX_NAME_BYTES} bytes in UTF-8")
    for part in name.split("/"):
        if (problem := windows_problem(part)) is not None:
            raise BadArtifactName(problem)
    return name


def windows_problem(part: str) -> str | None:
    """Why Windows cannot store ``part`` (one file or folder name) as it is, or None. A ZIP of a
    job's files unpacks anywhere, so such a name is not stored."""
    if (found := _NOT_ON_WINDOWS.search(part)) is not None:
        return (
            f"the name {part!r} holds {found.group()!r}, which Windows cannot store in a file "
            'name (none of < > : " | ? * is allowed)'
        )
    if part.endswith((".", " ")):
        return (
            f"the name {part!r} ends with a {'dot' if part.endswith('.') else 'space'}, which "
            "Windows drops (the file would unpack under another name)"
        )
    if _RESERVED_ON_WINDOWS.fullmatch(part):
        device = part.split(".", 1)[0].strip()
        return (
            f"the name {part!r} is Windows' device name {device.upper()} (CON, CONIN$, CONOUT$, "
            "PRN, AUX, NUL, COM1-9 and LPT1-9 are reserved whatever the extension), which no "
            "file can have there"
        )
    return None


def content_type(name: str) -> str:
    """Guessed from the name's extension; ``application/octet-stream`` when unknown."""
    # As a path: guess_type reads a bare name as a URL, so ``data:,x.html`` would take the
    # data: URL's type (text/plain) instead of its suffix's. Rows stored before keep their type.
    guessed, encoding = mimetypes.guess_type("/" + name, strict=False)
    if guessed is None or encoding is not None:
        # A .gz or .bz2 file is served as what it is, not as what it unpacks to.
        return {"gzip": "application/gzip", "bzip2": "application/x-bzip2"}.get(
            encoding or "", "application/octet-stream"
        )
    return guessed


def download_filename(name: str) -> str:
    """The name's last part with anything but letters, digits and ``_.-`` replaced (for the
    plain ``filename=`` of Content-Disposition, which every client reads the same way)."""
    last = name.rsplit("/", 1)[-1]
    return _UNSAFE_FILENAME.sub("_", last)[:150].strip("._-") or "artifact"
