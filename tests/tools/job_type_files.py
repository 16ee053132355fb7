"""The job-types files of the tests (``Settings.job_types_file``), each named once here."""

from __future__ import annotations

from pathlib import Path

TOOLS = Path(__file__).parent

# ``emit`` (numbered lines, a chosen exit code) and ``exclusive`` (the same, holding a lock).
TEST_TYPES = str(TOOLS / "jobtypes.toml")
# Types whose tools write artifacts.
ARTIFACT_TYPES = str(TOOLS / "artifact_jobtypes.toml")
# Types whose parameters carry what a hostile client would send (shell, paths, control bytes).
INJECTION_TYPES = str(TOOLS / "injection_jobtypes.toml")
