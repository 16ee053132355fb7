"""Schemathesis against a live jobrunner: no 5xx, every answer as documented.

Bounded on purpose (fixed seed, a few hundred cases): a regression net in the suite, not a
search that runs for hours. ``JOBRUNNER_FUZZ_EXAMPLES`` raises the budget for a longer run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import INJECTION_TYPES

EXAMPLES = int(os.environ.get("JOBRUNNER_FUZZ_EXAMPLES", "20"))
SEED = 20261123
# The global job_update stream never ends by itself; it is fuzzed for 5xx on its own below.
ENDLESS_STREAMS = r"^/api/jobs/stream$"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ARGV_RECORD_DIR", str(tmp_path))
    return msgspec.structs.replace(settings, job_types_file=INJECTION_TYPES, auth=True)


async def schemathesis(system: System, tmp_path: Path, *args: str) -> tuple[int, str, Any]:
    """Run the schemathesis CLI against the system; returns exit code, output, JSON report."""
    token = await system.create_token("fuzzer", "admin")
    schema = tmp_path / "openapi.json"
    async with system.client() as client:
        schema.write_text((await client.get("/api/schema/openapi.json")).text)
        # A real job, so that half of the generated job ids reach past the 404.
        created = await client.post("/api/jobs", json={"job_type": "record"})
        job_id = created.json()["id"]
    (tmp_path / "schemathesis.toml").write_text(
        f'[dictionaries.jobs]\nvalues = ["{job_id}"]\n\n'
        '[parameters]\n"path.job_id" = { dictionary = "jobs", probability = 0.5 }\n'
        # An external job's report has a body limit of its own (256 KiB), below the schema's
        # largest valid body: an oversized one is refused with 413, also when it is invalid.
        '\n[[operations]]\ninclude-path = "/api/external/jobs/{job_id}"\n'
        "[operations.checks.negative_data_rejection]\n"
        'expected-statuses = ["400", "401", "404", "409", "413", "415", "422"]\n'
        # An action's options may name up to 10,000 job ids: a generated invalid body can pass
        # the app's 1 MiB limit, and 413 is then the right refusal.
        "\n[[operations]]\n"
        "include-path-regex = "
        "'^/api/(batches|jobs)/[^/]+/(restart|pending|fail|archive|unarchive)$'\n"
        "[operations.checks.negative_data_rejection]\n"
        # ... and an action first waits for the read models: on a loaded machine they may be
        # behind for longer than it waits, and it answers 503 READ_MODEL_BEHIND (documented).
        'expected-statuses = ["400", "401", "404", "409", "413", "415", "422", "503"]\n'
    )
    report = tmp_path / "report.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(schema),
        "--url",
        system.base_url,
        "--header",
        f"Authorization: Bearer {token}",
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--no-color",
        "--generation-database",
        "none",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await process.communicate()
    data = json.loads(report.read_text()) if report.exists() else None
    return process.returncode or 0, out.decode(errors="replace"), data


def count_cases(output: str) -> int:
    match = re.search(r"(\d+) generated", output)
    return int(match.group(1)) if match else 0


async def test_fuzzed_api_has_no_server_errors_and_keeps_its_schema(
    system: System, tmp_path: Path
) -> None:
    """Every documented operation, authenticated, fuzzed: no 5xx and no undocumented answer."""
    code, output, _ = await schemathesis(
        system,
        tmp_path,
        "--checks",
        "all",
        # Schema-valid but refused on purpose: an expiry in the past, a token name already
        # used, a job id that does not exist. JSON Schema cannot say "in the future".
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(EXAMPLES),
        "--exclude-path-regex",
        ENDLESS_STREAMS,
        "--request-timeout",
        "20",
    )
    print(output)
    assert code == 0, output[-6000:]
    assert count_cases(output) >= 200  # the run really exercised the API


async def test_fuzzed_update_stream_has_no_server_errors(system: System, tmp_path: Path) -> None:
    """The endless job_update stream, fuzzed for 5xx only (its 200 answer never ends)."""
    code, output, _ = await schemathesis(
        system,
        tmp_path,
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(EXAMPLES),
        "--include-path-regex",
        ENDLESS_STREAMS,
        "--request-timeout",
        "1",
    )
    print(output)
    assert code == 0, output[-6000:]
