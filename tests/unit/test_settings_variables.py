"""Which ``JOBRUNNER_*`` variables the settings take, which they leave to other parts, and what
a stray one (a typo) is told: the name, and the closest variable there is."""

from __future__ import annotations

import re
import string
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrunner.common.settings import (
    OTHER_VARIABLE_PREFIXES,
    OTHER_VARIABLES,
    Settings,
    SettingsError,
    load_settings,
    stray_variables,
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


@given(st.text(string.ascii_letters + string.digits + "_", min_size=0, max_size=30))
def test_any_other_jobrunner_variable_is_stray_and_named(suffix: str) -> None:
    name = f"JOBRUNNER_{suffix}"
    if name in KNOWN or name.startswith(OTHER_VARIABLE_PREFIXES):
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
SCANNED_ELSEWHERE = {Path(__file__).resolve(), REPO / "tests" / "test_configuration_refusals.py"}


def test_every_jobrunner_variable_the_code_names_is_a_setting_or_a_known_other() -> None:
    """A variable a new part reads (or a script sets) must be added to OTHER_VARIABLES (and
    README), or every service started where it is set refuses to start."""
    unknown: dict[str, str] = {}
    for folder in ("jobrunner", "tests", "bench", "examples", "scripts"):
        for path in sorted((REPO / folder).rglob("*")):
            if not path.is_file() or path.suffix not in {"", ".py", ".sh", ".toml", ".yaml"}:
                continue
            if path.resolve() in SCANNED_ELSEWHERE or "__pycache__" in path.parts:
                continue
            text = path.read_text(errors="replace")
            for name in re.findall(r"\bJOBRUNNER_[A-Z0-9_]*[A-Z0-9]\b", text):
                if name not in NOT_VARIABLES and stray_variables({name: ""}):
                    unknown[name] = str(path.relative_to(REPO))
    for path in [*sorted(REPO.glob("compose*.yaml")), REPO / "Dockerfile"]:
        for name in re.findall(r"\bJOBRUNNER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            if stray_variables({name: ""}):
                unknown[name] = path.name
    assert unknown == {}
