"""Artifact names: which ones are stored and served, and how they are shown to a browser."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrunner.common.artifactnames import (
    MAX_NAME_BYTES,
    BadArtifactName,
    check_name,
    check_new_name,
    content_type,
    download_filename,
)


@pytest.mark.parametrize(
    "name",
    ["report.csv", "sub/deeper/x.json", "Übersicht 1.csv", "a b/c-d_e.f", "..x", "x.."],
)
def test_ordinary_names_are_accepted(name: str) -> None:
    """Relative paths with subfolders, spaces and umlauts are kept as they are."""
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../x",
        "sub/../../x",
        "./x",
        "sub//x",
        "sub/",
        "..\\x",
        "line\nbreak",
        "nul\x00",
        "bad\udcff",
        "x" * 256,
        "a/" * 600,
    ],
)
def test_unsafe_names_are_refused(name: str) -> None:
    """Absolute, traversing, empty-part, backslash, control, invalid and overlong names fail."""
    with pytest.raises(BadArtifactName):
        check_name(name)


@given(st.text(max_size=300))
def test_an_accepted_name_never_leaves_its_folder(name: str) -> None:
    """Whatever the text, an accepted name stays inside the folder it is unpacked into."""
    try:
        check_name(name)
    except BadArtifactName:
        return
    joined = posixpath.normpath(posixpath.join("/unpack", name))
    assert joined.startswith("/unpack/")
    assert "\\" not in name
    assert name.isprintable() or all(c not in name for c in "\n\r\x00")


@given(st.text(max_size=300))
def test_download_filename_is_always_plain_ascii(name: str) -> None:
    """The filename= of Content-Disposition holds only letters, digits and _.- (never empty)."""
    filename = download_filename(name)
    assert filename
    assert all(c.isascii() and (c.isalnum() or c in "_.-") for c in filename)


def test_content_type_is_guessed_from_the_extension() -> None:
    """Known extensions get their type; compressed files stay compressed; the rest is binary."""
    assert content_type("a/b.json") == "application/json"
    assert content_type("x.csv") == "text/csv"
    assert content_type("x.tar.gz") == "application/gzip"
    assert content_type("noext") == "application/octet-stream"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("data:report.txt", "text/plain"),
        ("data:,x.html", "text/html"),
        ("data:text/html,x.txt", "text/plain"),
        ("sub/data:,x.html", "text/html"),
    ],
)
def test_a_name_starting_like_a_data_url_gets_its_suffix_type(name: str, expected: str) -> None:
    """`data:...` is a file name like any other: its suffix names its type, not the media type a
    data: URL would carry."""
    assert check_name(name) == name
    assert content_type(name) == expected


def test_the_byte_limit_is_for_new_names_only() -> None:
    """A 2,216-byte name (stored before the limit came: its download must still work) passes
    check_name; only a name about to be stored is held to MAX_NAME_BYTES."""
    name = "/".join(["\U0001d538" * 50] * 11 + ["f.txt"])  # 11 parts of 200 bytes: 2,216
    assert MAX_NAME_BYTES < len(name.encode("utf-8")) < 2900
    assert check_name(name) == name
    with pytest.raises(BadArtifactName, match="bytes in UTF-8"):
        check_new_name(name)
    assert check_new_name("sub/report.csv") == "sub/report.csv"


@pytest.mark.parametrize(
    "mark", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2069"]
)
def test_a_bidirectional_override_is_refused_for_new_names_only(mark: str) -> None:
    """``invoice<U+202E>fdp.exe`` reads "invoiceexe.pdf" wherever it is shown: no name about
    to be stored may hold an override or isolate; one stored before still downloads."""
    name = f"sub/invoice{mark}fdp.exe"
    with pytest.raises(BadArtifactName, match="bidirectional override"):
        check_new_name(name)
    assert check_name(name) == name


def test_marks_and_joiners_stay_allowed_in_new_names() -> None:
    """The marks (U+200E, U+200F) and the joiners some scripts need reorder nothing alone."""
    for name in [
        "\u0645\u0631\u062d\u0628\u0627\u200f.txt",
        "\u0646\u0627\u0645\u200c\u0647\u0627.csv",
        "a\u200db.txt",
    ]:
        assert check_new_name(name) == name


@pytest.mark.parametrize(
    ("name", "told"),
    [
        ("q?x#y.csv", "holds '?'"),
        ("sub/a:b.txt", "holds ':'"),
        ('say "hi".txt', "holds '\"'"),
        ("a*b", "holds '*'"),
        ("a<b>c", "holds '<'"),
        ("pipe|d", "holds '|'"),
        ("report.", "ends with a dot"),
        ("folder /x.csv", "ends with a space"),
        ("CON", "device name CON"),
        ("sub/con.txt", "device name CON"),
        ("Nul.tar.gz", "device name NUL"),
        ("AUX .log", "device name AUX"),
        ("prn", "device name PRN"),
        ("COM1.csv", "device name COM1"),
        ("lpt9", "device name LPT9"),
        ("COM\u00b9.txt", "device name COM\u00b9"),
        ("conin$", "device name CONIN$"),
        ("logs/CONOUT$ .txt", "device name CONOUT$"),
    ],
)
def test_names_windows_cannot_store_are_refused_for_new_names_only(name: str, told: str) -> None:
    """A ZIP of the job's files unpacks anywhere: a new name Windows cannot store (one of
    < > : " | ? *, a part ending in a dot or a space, a device name with any extension) is
    refused, saying which; one stored before still downloads (check_name)."""
    with pytest.raises(BadArtifactName, match="Windows") as exc:
        check_new_name(name)
    assert told in str(exc.value)
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["CONSOLE.txt", "COM0", "LPT10.txt", "x.con", "my con.txt", "a b.txt", "#1 (x).csv"]
)
def test_names_that_only_look_like_device_names_are_stored(name: str) -> None:
    """Only the exact device names are reserved: CONSOLE, COM0, LPT10 or a .con extension are
    ordinary names on Windows too."""
    assert check_new_name(name) == name


# Python 3.13's ntpath._reserved_names.
WINDOWS_DEVICE_NAMES = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "CONIN$",
    "CONOUT$",
    *(f"{device}{n}" for device in ("COM", "LPT") for n in "123456789\u00b9\u00b2\u00b3"),
}


@given(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
    | st.builds(
        "{}{}{}".format,
        st.sampled_from(sorted(WINDOWS_DEVICE_NAMES)).map(str.lower) | st.just("CONSOLE"),
        st.sampled_from(["", " ", "  "]),
        st.sampled_from(["", ".txt", ".a.b", "x", " .log"]),
    )
)
def test_every_new_name_either_unpacks_on_windows_or_is_refused(part: str) -> None:
    """Whatever the name, check_new_name either refuses it or it holds none of Windows' bad
    characters, no part ends in a dot or a space and no part is a device name."""
    try:
        check_new_name(part)
    except BadArtifactName:
        return
    for piece in part.split("/"):
        assert not set(piece) & set('<>:"|?*')
        assert not piece.endswith((".", " "))
        # Python 3.13's ntpath.isreserved: the part before the first dot, trailing spaces
        # dropped, is no device name.
        assert piece.partition(".")[0].rstrip(" ").upper() not in WINDOWS_DEVICE_NAMES
