"""The code stays as the team agreed: ruff's rules and mypy strict on the product code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_finds_nothing() -> None:
    """`ruff check` passes with the rule list in pyproject.toml."""
    result = run("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_nothing() -> None:
    """`mypy` (strict, on contracts, services and jobrunner) reports no error."""
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
