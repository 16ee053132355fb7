"""The bench's paced tool in C says what the Python one says, and the bench falls back to the
Python one where the machine has no compiler."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.nativetools import PACED_PYTHON_ARGV, compile_paced

LINE = re.compile(r"INFO t=(\d+\.\d{6}) line (\d+)")
REPO = Path(__file__).resolve().parents[2]


def run(argv: tuple[str, ...], *args: str) -> list[tuple[float, int]]:
    out = subprocess.run([*argv, *args], capture_output=True, text=True, check=True, cwd=REPO)
    parsed = []
    for line in out.stdout.splitlines():
        match = LINE.fullmatch(line)
        assert match, line
        parsed.append((float(match.group(1)), int(match.group(2))))
    return parsed


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_c_tool_prints_what_the_python_tool_prints(tmp_path: Path) -> None:
    """Both tools print the same numbered lines with monotonic stamps, paced by --rate."""
    tool = compile_paced(tmp_path)
    assert tool.kind == "C"
    args = ("--rate", "200", "--seconds", "0.1", "--delay=0.05")
    before = float(
        subprocess.run(
            [sys.executable, "-c", "import time; print(time.monotonic())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    c_lines = run(tool.argv, *args)
    py_lines = run(PACED_PYTHON_ARGV, *args)
    assert [n for _, n in c_lines] == [n for _, n in py_lines] == list(range(1, 21))
    stamps = [t for t, _ in c_lines]
    # The same clock as Python's time.monotonic(), after the delay, 5 ms apart on average.
    assert stamps[0] >= before + 0.05
    assert stamps == sorted(stamps)
    assert stamps[-1] - stamps[0] >= 19 / 200 - 0.001


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_c_tool_refuses_an_unknown_argument(tmp_path: Path) -> None:
    """A typo in the bench's arguments fails as argparse would, not silently."""
    tool = compile_paced(tmp_path)
    result = subprocess.run([*tool.argv, "--rates", "5"], capture_output=True, check=False)
    assert result.returncode == 2


def test_python_tool_where_there_is_no_compiler(tmp_path: Path) -> None:
    """Without a working cc the bench runs the Python tool and says why."""
    tool = compile_paced(tmp_path, compiler="false")
    assert tool.kind == "Python"
    assert tool.argv == PACED_PYTHON_ARGV
    assert "cc failed" in tool.note
    assert not list(tmp_path.iterdir())  # nothing half-built left behind
