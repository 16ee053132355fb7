"""The event stream's recorded contract version, as read from the stream's metadata."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrunner.common import eventstore
from jobrunner.common.refusal import StateRefused
from jobrunner.contracts.events import CONTRACT_VERSION
from jobrunner.contracts.names import Names

NAMES = Names("jobrunner")
KEY = NAMES.contract_metadata_key


@given(st.dictionaries(st.text(max_size=30), st.text(max_size=50)) | st.none())
def test_any_metadata_reads_as_a_version_or_refuses_with_a_sentence(
    metadata: dict[str, str] | None,
) -> None:
    """Whatever a stream's metadata holds, a service either starts or refuses with one sentence:
    never a traceback."""
    recorded = eventstore.recorded_contract(NAMES, metadata)
    if recorded > CONTRACT_VERSION:
        with pytest.raises(StateRefused):
            eventstore.check_contract(NAMES, metadata)
    else:
        eventstore.check_contract(NAMES, metadata)


@given(st.text(max_size=5000))
def test_a_recorded_version_that_is_no_plain_number_counts_as_the_first(value: str) -> None:
    """A recorded version that is no plain number (another tool wrote it) counts as 1."""
    recorded = eventstore.recorded_contract(NAMES, {KEY: value})
    if value.isascii() and value.isdigit() and len(value) <= 9:
        assert recorded == int(value)
    else:
        assert recorded == 1


def test_a_stream_without_a_recorded_version_is_the_first() -> None:
    """A stream made before contract versions were recorded follows contract 1."""
    assert eventstore.recorded_contract(NAMES, None) == 1
    assert eventstore.recorded_contract(NAMES, {"_nats.level": "1"}) == 1


def test_a_newer_recorded_version_is_refused_naming_both() -> None:
    """A stream of a newer contract stops the service, naming its version and this one's."""
    with pytest.raises(StateRefused) as refused:
        eventstore.check_contract(NAMES, {KEY: str(CONTRACT_VERSION + 1)})
    assert f"contract version {CONTRACT_VERSION + 1}" in str(refused.value)
    assert f"up to version {CONTRACT_VERSION}" in str(refused.value)


def test_the_stream_config_records_this_contract_version() -> None:
    """Every service that declares the stream records the contract version it writes."""
    from jobrunner.common.settings import Settings

    config = eventstore.stream_config(NAMES, Settings())
    assert config.metadata == {KEY: str(CONTRACT_VERSION)}
