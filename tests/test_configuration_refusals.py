"""A configuration mistake, in the environment as in the config file, stops the real command at
start with exit code 78 (EX_CONFIG) and one sentence saying what is wrong and what to write."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from jobrunner.common.exitcodes import CONFIG
from tests.tools.service_links import ServicePort, service_link_variables

REPO = Path(__file__).resolve().parents[1]


def jobrunner(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m jobrunner.cli ARGS`` with only these JOBRUNNER_* variables set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
    return subprocess.run(
        [sys.executable, "-m", "jobrunner.cli", *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def missing_ca_file(tmp_path: Path) -> dict[str, str]:
    """A refusal later than the one a test looks for (a CA file that is not there), so that a
    command that no longer refuses stops there at once rather than starting a service."""
    return {"JOBRUNNER_NATS_TLS_CA_FILE": str(tmp_path / "missing-ca.pem")}


def test_a_service_refuses_a_misspelt_variable_naming_the_one_meant(tmp_path: Path) -> None:
    """JOBRUNNER_DATABASE_URI (for _URL) stops the runner instead of using the default
    database."""
    run = jobrunner(
        "runner",
        env={"JOBRUNNER_DATABASE_URI": "postgresql://db.example/jobs", **missing_ca_file(tmp_path)},
    )
    assert run.returncode == CONFIG, run.stderr
    assert run.stderr == (
        "jobrunner: JOBRUNNER_DATABASE_URI is set but is no setting; did you mean "
        "JOBRUNNER_DATABASE_URL? (A variable no part of jobrunner reads stops a service: "
        "remove or rename it.)\n"
    )


def test_up_refuses_a_misspelt_variable_before_it_starts_anything(tmp_path: Path) -> None:
    """`jobrunner up` says it at once: no state directory made, no server started."""
    state = tmp_path / "state"
    run = jobrunner(
        "up",
        "--state-dir",
        str(state),
        "--port",
        "1",
        env={"JOBRUNNER_LEASE_TTL_SECOND": "30", **missing_ca_file(tmp_path)},
    )
    assert run.returncode == CONFIG, run.stderr
    assert "did you mean JOBRUNNER_LEASE_TTL_SECONDS?" in run.stderr
    assert not state.exists()


def test_variables_meant_for_other_commands_do_not_stop_a_service(tmp_path: Path) -> None:
    """The terminal client's URL and token, a tool's output directory, the tests' and the
    benchmarks' variables, a retired setting's: the runner gets past them to its NATS settings
    (a CA file that is missing, its next refusal)."""
    run = jobrunner(
        "runner",
        env={
            "JOBRUNNER_URL": "http://127.0.0.1:1",
            "JOBRUNNER_TOKEN": "t",
            "JOBRUNNER_OUTPUT_DIR": str(tmp_path),
            "JOBRUNNER_CALLBACK_TOKEN": "t",
            "JOBRUNNER_BIND": "0.0.0.0",
            "JOBRUNNER_TEST_ANYTHING": "1",
            "JOBRUNNER_BENCH_NATSCOUNT": str(tmp_path),
            "JOBRUNNER_FUZZ_EXAMPLES": "5",
            "JOBRUNNER_LINE_FLUSH_INTERVAL_MS": "50",
            **missing_ca_file(tmp_path),
        },
    )
    assert run.stderr == (
        f"jobrunner: nats_tls_ca_file: {tmp_path / 'missing-ca.pem'} is not a readable file\n"
    )
    assert run.returncode == CONFIG


def test_kubernetes_service_links_do_not_stop_a_service(tmp_path: Path) -> None:
    """Services named jobrunner, jobrunner-nats and jobrunner-api in the pod's namespace: the
    API passes over all their variables, says once that JOBRUNNER_PORT=tcp://... is no port,
    and goes on (to a CA file that is missing, its next refusal)."""
    links = {
        **service_link_variables("jobrunner", "10.0.0.1", [ServicePort(8000, "http")]),
        **service_link_variables(
            "jobrunner-nats",
            "10.0.0.2",
            [ServicePort(4222, "client"), ServicePort(8222, "monitor")],
        ),
        **service_link_variables("jobrunner-api", "fd00::3", [ServicePort(8000)]),
    }
    run = jobrunner("api", env={**links, **missing_ca_file(tmp_path)})
    assert run.stderr == (
        "jobrunner: warning: JOBRUNNER_PORT=tcp://10.0.0.1:8000 is a Kubernetes service link "
        "(a Service named jobrunner), not a port: ignored; port stays 8000\n"
        f"jobrunner: nats_tls_ca_file: {tmp_path / 'missing-ca.pem'} is not a readable file\n"
    )
    assert run.returncode == CONFIG


def test_a_command_that_reads_no_setting_warns_and_goes_on() -> None:
    """`jobrunner schema` (like the terminal client) runs no service: a stray variable is told,
    not fatal."""
    run = jobrunner("schema", "events", env={"JOBRUNNER_TOKN": "t"})
    assert run.returncode == 0, run.stderr
    assert run.stderr == (
        "jobrunner: warning: JOBRUNNER_TOKN is set but is no setting; did you mean "
        "JOBRUNNER_TOKEN?\n"
    )
    assert run.stdout.startswith("{")


def test_a_variable_that_is_not_a_number_is_named_with_what_to_write() -> None:
    run = jobrunner("runner", env={"JOBRUNNER_LEASE_TTL_SECONDS": "abc"})
    assert run.returncode == CONFIG, run.stderr
    assert run.stderr == (
        "jobrunner: JOBRUNNER_LEASE_TTL_SECONDS='abc' is not a number: lease_ttl_seconds takes "
        "a number of seconds from 3 to 2305843009, such as 15\n"
    )


def test_a_variable_out_of_range_is_named_with_what_to_write() -> None:
    """JOBRUNNER_LEASE_TTL_SECONDS=inf (was accepted: no upper limit)."""
    run = jobrunner("runner", env={"JOBRUNNER_LEASE_TTL_SECONDS": "inf"})
    assert run.returncode == CONFIG, run.stderr
    assert run.stderr == (
        "jobrunner: JOBRUNNER_LEASE_TTL_SECONDS='inf' is out of range: lease_ttl_seconds takes "
        "a number of seconds from 3 to 2305843009, such as 15\n"
    )


def test_a_variable_that_is_not_true_or_false_is_named_with_what_to_write() -> None:
    run = jobrunner("api", env={"JOBRUNNER_AUTH": "maybe"})
    assert run.returncode == CONFIG, run.stderr
    assert run.stderr == (
        "jobrunner: JOBRUNNER_AUTH='maybe' is not true or false: auth takes true or false "
        "(or 1 or 0)\n"
    )


def run_with_config_file(
    tmp_path: Path, command: str, text: str
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``command`` run on a config file holding ``text`` (the environment empty), which it
    refuses as a configuration error; the file, for the message to name."""
    config = tmp_path / "jobrunner.toml"
    config.write_text(text)
    run = jobrunner(command, "--config", str(config), env={})
    assert run.returncode == CONFIG, run.stderr
    return config, run


def test_a_config_file_value_of_the_wrong_type_names_the_file_and_key(tmp_path: Path) -> None:
    config, run = run_with_config_file(tmp_path, "runner", 'max_concurrent_jobs = "eight"\n')
    assert run.stderr == (
        f'jobrunner: config file {config} has max_concurrent_jobs = "eight", which is not a '
        "whole number: max_concurrent_jobs takes a whole number from 1 to 10000, such as 8\n"
    )


def test_a_config_file_value_out_of_range_names_the_file_and_key(tmp_path: Path) -> None:
    """Was: "invalid setting: lease_ttl_seconds = 1.0 is outside its range", neither the file
    nor the value as written."""
    config, run = run_with_config_file(tmp_path, "projector", "lease_ttl_seconds = 1\n")
    assert run.stderr == (
        f"jobrunner: config file {config} has lease_ttl_seconds = 1, which is out of range: "
        "lease_ttl_seconds takes a number of seconds from 3 to 2305843009, such as 15\n"
    )


def test_a_config_file_typo_stops_a_service_as_a_configuration_error(tmp_path: Path) -> None:
    """The file's typo and the environment's alike: 78, which `jobrunner up` does not restart
    (was 2, a usage error, which also meant `unavailable` to `jobrunner health`'s callers)."""
    _, run = run_with_config_file(tmp_path, "projector", "lease_ttl_secods = 30\n")
    assert "did you mean 'lease_ttl_seconds'?" in run.stderr


def test_a_job_types_file_that_is_not_text_is_named_not_a_traceback(tmp_path: Path) -> None:
    """`job_types_file = 5` (was: a TypeError's traceback, joining the number to the file's
    folder)."""
    config, run = run_with_config_file(tmp_path, "runner", "job_types_file = 5\n")
    assert run.stderr == (
        f"jobrunner: config file {config} has job_types_file = 5, which is not text: "
        "job_types_file takes a path in quotes\n"
    )


def test_a_stream_size_the_nats_server_has_no_room_for_stops_the_runner_in_a_sentence(
    nats_server_url: str,
) -> None:
    """Only the server knows its storage: the runner's start stops with one line naming the
    variable it was written as and exit 1, not JetStream's error 10047 as a traceback."""
    largest = 2**63 - 1
    run = jobrunner(
        "runner",
        env={
            "JOBRUNNER_NATS_URL": nats_server_url,
            "JOBRUNNER_PREFIX": f"t{uuid.uuid4().hex[:10]}",
            "JOBRUNNER_STREAM_MAX_BYTES": str(largest),
        },
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines()[-1].startswith(
        f"jobrunner: JOBRUNNER_STREAM_MAX_BYTES='{largest}' is more than NATS has room for "
        "(JetStream: insufficient storage resources available): set it within the server's or "
        "the account's JetStream storage"
    ), run.stderr
    assert "Traceback" not in run.stderr


def test_a_value_above_a_new_bound_that_worked_before_stops_no_command() -> None:
    """JOBRUNNER_SESSION_MAX_AGE_SECONDS=31536000000 (a year of seconds times a thousand) ran
    before its bound: `jobrunner health`, a container's healthcheck, exited 78 with it after the
    upgrade. Now it warns, naming the variable and what is used, and goes on to ask the API
    (none answers here: its own "unavailable", 69)."""
    run = jobrunner(
        "health",
        env={
            "JOBRUNNER_SESSION_MAX_AGE_SECONDS": "31536000000",
            "JOBRUNNER_URL": "http://127.0.0.1:9",
        },
    )
    assert run.returncode == 69, run.stderr
    assert run.stderr.startswith(
        "jobrunner: warning: JOBRUNNER_SESSION_MAX_AGE_SECONDS='31536000000' is above the "
        "largest value there is: 34560000 is used instead (browsers keep no cookie longer than "
        "400 days; README, Upgrading)\n"
    ), run.stderr
