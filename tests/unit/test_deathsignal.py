"""How a tool is started so that it dies with its runner (deathsignal.py): through setpriv only
for what the kernel executes itself, found where the subprocess module would find it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobrunner.common import deathsignal

SETPRIV = "/usr/bin/setpriv"
# The start of a binary this machine runs: the header of the interpreter running the tests.
ELF = Path("/proc/self/exe").read_bytes()[:64]


def _tool(directory: Path, name: str, content: bytes, mode: int = 0o755) -> Path:
    path = directory / name
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.fixture
def with_setpriv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deathsignal, "setpriv", lambda: SETPRIV)


def test_name_is_found_along_the_tools_path(tmp_path: Path) -> None:
    """A bare name is looked up along the PATH the tool gets, not the runner's."""
    tool = _tool(tmp_path, "mytool", b"#!/bin/sh\n")
    assert deathsignal.executable("mytool", None, {"PATH": f"/nonexistent:{tmp_path}"}) == str(tool)
    assert deathsignal.executable("mytool", None, {"PATH": "/nonexistent"}) is None


def test_file_that_is_not_executable_is_not_found(tmp_path: Path) -> None:
    """A file without the execute bit is skipped, as exec would skip it."""
    _tool(tmp_path, "mytool", b"#!/bin/sh\n", mode=0o644)
    assert deathsignal.executable("mytool", None, {"PATH": str(tmp_path)}) is None


def test_name_with_a_slash_is_taken_from_the_working_directory(tmp_path: Path) -> None:
    """``./tool`` is found in the job type's cwd."""
    tool = _tool(tmp_path, "mytool", ELF)
    found = deathsignal.executable("./mytool", str(tmp_path), {"PATH": "/nonexistent"})
    assert found is not None
    assert os.path.samefile(found, tool)


def test_elf_and_shebang_run_directly_and_nothing_else(tmp_path: Path) -> None:
    """ELF binaries and #! scripts are executed by the kernel; a bare script is not."""
    assert deathsignal.runs_directly(str(_tool(tmp_path, "elf", ELF)))
    assert deathsignal.runs_directly(str(_tool(tmp_path, "script", b"#!/bin/sh\necho\n")))
    assert not deathsignal.runs_directly(str(_tool(tmp_path, "bare", b"echo hello\n")))
    assert not deathsignal.runs_directly(str(_tool(tmp_path, "empty", b"")))
    assert not deathsignal.runs_directly(str(tmp_path / "missing"))


@pytest.mark.usefixtures("with_setpriv")
def test_a_binary_starts_through_setpriv_with_its_own_argv(tmp_path: Path) -> None:
    """A real binary starts through setpriv (no preexec_fn), its argv unchanged behind it."""
    _tool(tmp_path, "mytool", ELF)
    argv, preexec = deathsignal.launch(["mytool", "--flag", "-x"], None, {"PATH": str(tmp_path)})
    assert argv == [SETPRIV, "--pdeathsig", "KILL", "--", "mytool", "--flag", "-x"]
    assert preexec is None


@pytest.mark.usefixtures("with_setpriv")
def test_a_file_the_kernel_cannot_run_starts_as_before(tmp_path: Path) -> None:
    """A script without #! never reaches setpriv's execvp (which would hand it to a shell)."""
    _tool(tmp_path, "bare", b"echo hello\n")
    argv, preexec = deathsignal.launch(["bare"], None, {"PATH": str(tmp_path)})
    assert argv == ["bare"]
    assert preexec is deathsignal.die_with_runner


def _other_machine(header: bytes) -> bytes:
    """The same header for another machine (e_machine changed): the kernel refuses it."""
    order = "little" if header[5] == 1 else "big"
    machine = int.from_bytes(header[18:20], order)
    return header[:18] + (machine ^ 0x5A).to_bytes(2, order) + header[20:]


def test_what_only_looks_runnable_is_not_taken_to_run_directly(tmp_path: Path) -> None:
    """Files the kernel refuses with ENOEXEC although they start like a binary or a script:
    setpriv's execvp would hand each to /bin/sh."""
    refused = {
        "truncated": ELF[:8],
        "other-machine": _other_machine(ELF),
        "relocatable": ELF[:16] + b"\x01\x00" + ELF[18:],  # an object file, not a program
        "bare-interpreter": b"#!" + str(_tool(tmp_path, "bare", b"echo hi\n")).encode() + b"\n",
        "relative-interpreter": b"#!bin/sh\n",
        "missing-interpreter": b"#!/nonexistent/sh\n",
        "endless-line": b"#!/bin/sh " + b"x" * 300 + b"\n",
    }
    for name, content in refused.items():
        assert not deathsignal.runs_directly(str(_tool(tmp_path, name, content))), name
    script = _tool(tmp_path, "script", b"#!/bin/sh\n")
    nested = _tool(tmp_path, "nested", b"#!" + str(script).encode() + b" -e\n")
    assert deathsignal.runs_directly(str(nested))


@pytest.mark.usefixtures("with_setpriv")
def test_a_binary_for_another_machine_never_reaches_a_shell(tmp_path: Path) -> None:
    """A file that begins like an ELF binary but that this kernel cannot run starts the old way:
    exec fails with its reason instead of /bin/sh running the file as a script."""
    _tool(tmp_path, "fake", _other_machine(ELF) + b"\necho RAN-THROUGH-A-SHELL\n")
    argv, preexec = deathsignal.launch(["fake"], None, {"PATH": str(tmp_path)})
    assert argv == ["fake"]
    assert preexec is deathsignal.die_with_runner


@pytest.mark.usefixtures("with_setpriv")
def test_a_missing_tool_starts_as_before_to_fail_with_its_reason(tmp_path: Path) -> None:
    """A tool that is not there goes the old way, so SPAWN_FAILED keeps exec's own reason."""
    argv, preexec = deathsignal.launch(["/nonexistent/tool"], None, {"PATH": str(tmp_path)})
    assert argv == ["/nonexistent/tool"]
    assert preexec is deathsignal.die_with_runner


def test_without_setpriv_every_tool_starts_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine without setpriv sets the signal from Python, as before."""
    monkeypatch.setattr(deathsignal, "setpriv", lambda: None)
    _tool(tmp_path, "mytool", ELF)
    argv, preexec = deathsignal.launch(["mytool"], None, {"PATH": str(tmp_path)})
    assert argv == ["mytool"]
    assert preexec is deathsignal.die_with_runner
