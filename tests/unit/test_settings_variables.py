"""Which ``JOBRUNNER_*`` variables the settings take, which they leave to other parts, and what
a stray one (a typo) is told: the name, and the closest variable there is."""

from __future__ import annotations

import contextlib
import os
import re
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrunner.common.settings import (
    OTHER_VARIABLE_PREFIXES,
    OTHER_VARIABLES,
    Settings,
    SettingsError,
    ignored_service_links,
    load_settings,
    stray_variables,
)
from tests.tools.service_links import (
    ServicePort,
    cluster_ips,
    jobrunner_service_names,
    service_link_variables,
    service_ports,
)

SETTING_VARIABLES = sorted(f"JOBRUNNER_{name.upper()}" for name in Settings.__struct_fields__)
KNOWN = set(SETTING_VARIABLES) | set(OTHER_VARIABLES)
REPO = Path(__file__).resolve().parents[2]


def test_a_misspelt_setting_variable_is_named_with_the_one_meant() -> None:
    """JOBRUNNER_DATABASE_URI (for _URL) is no longer quietly ignored."""
    assert stray_variables({"JOBRUNNER_DATABASE_URI": "postgresql://elsewhere/db"}) == [
        "JOBRUNNER_DATABASE_URI is set but is no setting; did you mean JOBRUNNER_DATABASE_URL?"
    ]


def test_a_variable_like_nothing_is_named_without_a_guess() -> None:
    assert stray_variables({"JOBRUNNER_BOGUS": "1"}) == [
        "JOBRUNNER_BOGUS is set but is no setting (README, Configuration, lists the variables)"
    ]


def test_a_setting_variable_in_lower_case_is_named_with_its_upper_case() -> None:
    """Variable names are case-sensitive: jobrunner_port was ignored as silently as a typo."""
    assert stray_variables({"jobrunner_port": "9000"}) == [
        "jobrunner_port is set but is no setting; did you mean JOBRUNNER_PORT?"
    ]


def test_a_tests_or_benchmarks_variable_in_lower_case_is_named_with_its_upper_case() -> None:
    """The prefixes JOBRUNNER_TEST_, _BENCH_ and _FUZZ_ are matched as written, like every
    variable name: jobrunner_bench_natscount is stray, told its upper-case form."""
    assert stray_variables({"jobrunner_bench_natscount": "1"}) == [
        "jobrunner_bench_natscount is set but is no setting; did you mean "
        "JOBRUNNER_BENCH_NATSCOUNT?"
    ]


def test_a_near_miss_of_another_commands_variable_is_named_too() -> None:
    """JOBRUNNER_TOKN, meant for the terminal client's JOBRUNNER_TOKEN."""
    assert stray_variables({"JOBRUNNER_TOKN": "t"}) == [
        "JOBRUNNER_TOKN is set but is no setting; did you mean JOBRUNNER_TOKEN?"
    ]


def test_every_stray_variable_is_named_in_name_order() -> None:
    found = stray_variables({"JOBRUNNER_PROT": "1", "PATH": "/bin", "JOBRUNNER_HOTS": "x"})
    assert [sentence.split()[0] for sentence in found] == ["JOBRUNNER_HOTS", "JOBRUNNER_PROT"]


@given(
    st.dictionaries(
        st.sampled_from(sorted(KNOWN))
        | st.tuples(
            st.sampled_from(OTHER_VARIABLE_PREFIXES),
            st.text(string.ascii_uppercase + "_", max_size=12),
        ).map("".join)
        | st.text(string.ascii_letters + "_").filter(lambda n: not n.upper().startswith("JOBRUN")),
        st.text(),
    )
)
def test_settings_other_commands_variables_and_foreign_ones_are_never_stray(
    environ: dict[str, str],
) -> None:
    """A setting's variable, one another part of jobrunner reads (the terminal client's URL and
    token, a tool's output directory, the tests' and benchmarks') and any other program's
    variable never stop a service, whatever their values."""
    assert stray_variables(environ) == []


# The names Kubernetes gives a pod for a Service named jobrunner or jobrunner-... (but for
# <SERVICE>_PORT, a link by its value tcp://...).
SERVICE_LINK = re.compile(
    r"JOBRUNNER_(?:[A-Z0-9_]+_)?"
    r"(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT_\d+_(?:TCP|UDP|SCTP)(?:_PROTO|_PORT|_ADDR)?)"
)


@given(
    st.text(string.ascii_letters + string.digits + "_", min_size=0, max_size=30)
    | st.sampled_from(["NATS_SERVICE_HOS", "PORT_80_TCP_ADR", "SERVICEHOST", "PORT_HTTP_TCP"])
)
def test_any_other_jobrunner_variable_is_stray_and_named(suffix: str) -> None:
    name = f"JOBRUNNER_{suffix}"
    if name in KNOWN or name.startswith(OTHER_VARIABLE_PREFIXES) or SERVICE_LINK.fullmatch(name):
        return
    [sentence] = stray_variables({name: "1"})
    assert sentence.startswith(f"{name} is set but is no setting")


@given(
    st.sampled_from(SETTING_VARIABLES),
    st.integers(min_value=0),
    st.sampled_from(["delete", "replace", "swap"]),
    st.sampled_from(string.ascii_uppercase),
)
def test_a_one_letter_slip_in_a_setting_variable_gets_a_guess(
    variable: str, where: int, slip: str, letter: str
) -> None:
    """A letter dropped, replaced or two swapped in the setting's part of the name: the
    sentence names a variable there is (usually the one meant)."""
    suffix = variable.removeprefix("JOBRUNNER_")
    at = where % len(suffix)
    if slip == "delete":
        suffix = suffix[:at] + suffix[at + 1 :]
    elif slip == "replace":
        suffix = suffix[:at] + letter + suffix[at + 1 :]
    elif at + 1 < len(suffix):
        suffix = suffix[:at] + suffix[at + 1] + suffix[at] + suffix[at + 2 :]
    typo = f"JOBRUNNER_{suffix}"
    if typo in KNOWN or typo.startswith(OTHER_VARIABLE_PREFIXES):
        return
    [sentence] = stray_variables({typo: "x"})
    guess = re.fullmatch(rf"{typo} is set but is no setting; did you mean (\w+)\?", sentence)
    assert guess is not None, sentence
    assert guess[1] in KNOWN


@contextlib.contextmanager
def environment_of(variables: dict[str, str]) -> Iterator[None]:
    """This process's JOBRUNNER_ variables exactly ``variables`` for a while."""
    with pytest.MonkeyPatch.context() as environment:
        for name in [n for n in os.environ if n.upper().startswith("JOBRUNNER_")]:
            environment.delenv(name)
        for name, value in variables.items():
            environment.setenv(name, value)
        yield


@given(jobrunner_service_names(), cluster_ips(), service_ports())
def test_kubernetes_service_links_neither_stop_a_service_nor_change_a_setting(
    service: str, cluster_ip: str, ports: list[ServicePort]
) -> None:
    """A Service named jobrunner (or jobrunner-nats, jobrunner-api, ...) gives every pod of its
    namespace JOBRUNNER_SERVICE_HOST, JOBRUNNER_PORT=tcp://..., JOBRUNNER_PORT_8000_TCP_ADDR
    and the like: none is stray, none is read as a setting."""
    links = service_link_variables(service, cluster_ip, ports)
    assert stray_variables(links) == []
    with environment_of({}):
        unset = load_settings()
    with environment_of(links):
        assert load_settings() == unset


@given(
    cluster_ip=cluster_ips(),
    number=st.integers(min_value=1, max_value=65535),
    protocol=st.sampled_from(["tcp", "udp", "sctp"]),
    in_file=st.sampled_from([None, 9000]),
)
def test_a_service_link_in_place_of_the_port_leaves_the_port_as_configured(
    cluster_ip: str, number: int, protocol: str, in_file: int | None, tmp_path_factory: Any
) -> None:
    """JOBRUNNER_PORT=tcp://10.0.0.1:8000 (from a Service named jobrunner) is no port: the
    port stays the config file's or the default, and the one warning says why."""
    link = service_link_variables(
        "jobrunner", cluster_ip, [ServicePort(number, protocol=protocol.upper())]
    )["JOBRUNNER_PORT"]
    config = None
    if in_file is not None:
        config = tmp_path_factory.mktemp("config") / "jobrunner.toml"
        config.write_text(f"port = {in_file}\n")
    with environment_of({"JOBRUNNER_PORT": link}):
        settings = load_settings(config)
        warnings = ignored_service_links(os.environ, settings)
    assert settings.port == (in_file or 8000)
    assert warnings == [
        f"JOBRUNNER_PORT={link} is a Kubernetes service link (a Service named jobrunner), not "
        f"a port: ignored; port stays {settings.port}"
    ]


def test_the_link_warning_names_the_port_it_stays_at() -> None:
    """The sentence of README's Configuration, for the default port."""
    with environment_of({"JOBRUNNER_PORT": "tcp://10.0.0.1:8000"}):
        warnings = ignored_service_links(os.environ, load_settings())
    assert warnings == [
        "JOBRUNNER_PORT=tcp://10.0.0.1:8000 is a Kubernetes service link (a Service named "
        "jobrunner), not a port: ignored; port stays 8000"
    ]


def test_a_port_set_as_a_number_is_read_and_not_warned_about() -> None:
    """An env entry of the pod spec (JOBRUNNER_PORT=9001) overrides the link; it is the port."""
    with environment_of({"JOBRUNNER_PORT": "9001"}):
        settings = load_settings()
        assert ignored_service_links(os.environ, settings) == []
    assert settings.port == 9001


@pytest.mark.parametrize(
    "name",
    ["JOBRUNNER_NATS_PORT", "JOBRUNNER_PROT", "JOBRUNNER_SERVICE_HOSTS", "jobrunner_service_host"],
)
def test_a_name_like_a_link_whose_value_is_not_one_is_still_stray(name: str) -> None:
    """Only the kubelet's own names, or an address with a link's scheme, are passed over."""
    [sentence] = stray_variables({name: "4222"})
    assert sentence.startswith(f"{name} is set but is no setting")


def test_a_retired_setting_variable_is_ignored_as_the_config_files_key_is() -> None:
    """JOBRUNNER_LINE_FLUSH_INTERVAL_MS, of older releases: the config file still takes
    line_flush_interval_ms, so the environment does too."""
    assert stray_variables({"JOBRUNNER_LINE_FLUSH_INTERVAL_MS": "50"}) == []
    with environment_of({"JOBRUNNER_LINE_FLUSH_INTERVAL_MS": "50"}):
        load_settings()


NOT_TEXT = sorted(
    field.name for field in msgspec.structs.fields(Settings) if field.type in (int, float, bool)
)
# Words msgspec reads as a number or a bool whatever the field's type (inf, nan, true, ...).
READ_AS_VALUES = {"inf", "infinity", "nan", "true", "false"}


@given(
    st.sampled_from(NOT_TEXT),
    st.text(string.ascii_letters, min_size=1, max_size=12).filter(
        lambda word: word.lower() not in READ_AS_VALUES
    ),
)
def test_a_variable_of_the_wrong_type_is_named_with_its_value_and_what_to_write(
    name: str, value: str
) -> None:
    """Not msgspec's "Expected `float`, got `str`" (every variable is a string): the variable,
    the value given and what the setting takes."""
    variable = f"JOBRUNNER_{name.upper()}"
    with pytest.MonkeyPatch.context() as environment:
        environment.delenv("JOBRUNNER_CONFIG", raising=False)
        environment.setenv(variable, value)
        with pytest.raises(SettingsError) as raised:
            load_settings()
    sentence = str(raised.value)
    assert sentence.startswith(f"{variable}={value!r} is not "), sentence
    assert f": {name} takes " in sentence
    assert "Expected" not in sentence


# Upper-case words of the tree that start so but are not variables.
NOT_VARIABLES = {"JOBRUNNER_EVENTS"}  # the event stream's name under the default prefix
# Where a stray name is written on purpose.
SCANNED_ELSEWHERE = {
    "tests/unit/test_settings_variables.py",
    "tests/test_configuration_refusals.py",
}
SCANNED_FOLDERS = ("jobrunner/", "tests/", "bench/", "examples/", "scripts/")


def tracked_files() -> list[str]:
    """The repository's files as git has them (not a scratch file someone left in the tree)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True
    )
    return sorted(name for name in listed.stdout.split("\0") if name)


def test_every_jobrunner_variable_the_code_names_is_a_setting_or_a_known_other() -> None:
    """A variable a new part reads (or a script sets) must be added to OTHER_VARIABLES (and
    README), or every service started where it is set refuses to start."""
    unknown: dict[str, str] = {}
    for name in tracked_files():
        path = REPO / name
        scanned = name.startswith(SCANNED_FOLDERS) and path.suffix in {"", ".py", ".sh", ".toml"}
        scanned = scanned or path.suffix == ".yaml" or path.name == "Dockerfile"
        if not scanned or name in SCANNED_ELSEWHERE or not path.is_file():
            continue
        for variable in re.findall(r"\bJOBRUNNER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text("utf-8")):
            if variable not in NOT_VARIABLES and stray_variables({variable: ""}):
                unknown[variable] = name
    assert unknown == {}


def test_every_variable_left_to_other_parts_is_in_the_readme() -> None:
    """README's Configuration names each variable the settings leave alone, so that an
    operator told "no setting" can see which are."""
    readme = (REPO / "README.md").read_text("utf-8")
    configuration = readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    written = set(re.findall(r"`(JOBRUNNER_[A-Z0-9_]+)\*?`", configuration))
    assert set(OTHER_VARIABLES) - written == set()
    assert {f"{prefix}" for prefix in OTHER_VARIABLE_PREFIXES} - written == set()
