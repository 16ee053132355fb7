"""A test that failed and passed when run again (``--reruns``): the end of the run shows how
its first attempt failed (tests/reruns.py), which CI otherwise loses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAILS_ONCE = """
from pathlib import Path

import pytest

def test_fails_the_first_time() -> None:
    print("the service said: about to hang")
    mark = Path(__file__).with_name("attempted")
    if not mark.exists():
        mark.write_text("once")
        raise AssertionError("the first attempt's own failure")

def test_passes() -> None:
    pass


def first(name: str) -> bool:
    mark = Path(__file__).with_name(name)
    if mark.exists():
        return False
    mark.write_text("once")
    return True


@pytest.fixture
def ends_badly_once():
    print("the fixture's", "setup said hello")
    yield
    if first("torn down"):
        raise RuntimeError("the first teardown's own failure")


def test_fails_in_call_and_teardown_once(ends_badly_once: None) -> None:
    print("y" * 30_000, "the call's", "last words")
    assert not first("called"), "the first call's own failure"
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_the_first_attempt_of_a_rerun_test_is_printed(tmp_path: Path, workers: str) -> None:
    (tmp_path / "test_once.py").write_text(FAILS_ONCE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    run = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.reruns", "-p", "no:cacheprovider"),
            *("--reruns", "1", "-n", workers, "-c", str(tmp_path / "pytest.ini")),
            str(tmp_path / "test_once.py"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "3 passed, 3 rerun" in out, out
    assert "the failed attempts of the tests run again" in out, out
    assert "test_once.py::test_fails_the_first_time (failed in call)" in out, out
    assert "AssertionError: the first attempt's own failure" in out, out
    assert "the service said: about to hang" in out, out
    # The call's and the teardown's failures both shown, each captured section once.
    assert "AssertionError: the first call's own failure" in out, out
    assert "RuntimeError: the first teardown's own failure" in out, out
    assert out.count("the fixture's setup said hello") == 1, out
    assert out.count("the call's last words") == 1, out
    # A section cut to its last 20 kB of characters, though one line.
    assert "y" * 19_000 in out, out
    assert "y" * 20_001 not in out, out
    assert "(its last 20,000 of 30,0" in out, out
