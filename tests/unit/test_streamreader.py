"""The stream reader's server list (common/streamreader.py): the configured servers, then those
the cluster announces."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.common.streamreader import StreamReader


def reader(*servers: str) -> StreamReader:
    js: Any = None  # never used: only the server list is looked at
    return StreamReader(js, list(servers), "S", ">")


def test_announced_servers_come_after_the_configured_ones() -> None:
    """A reader configured with one node learns the others from its INFO."""
    r = reader("nats://127.0.0.1:4222")
    info = {"connect_urls": ["127.0.0.1:4222", "127.0.0.1:4223", "127.0.0.1:4224"]}
    r._learn(info, urlsplit("nats://127.0.0.1:4222"))
    assert r._discovered == ["nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]


def test_announced_servers_take_the_announcers_scheme_and_credentials() -> None:
    """A discovered node is reached as the node that named it was: same TLS, same user."""
    r = reader("tls://user:secret@n1:4222")
    r._learn({"connect_urls": ["n2:4222"]}, urlsplit("tls://user:secret@n1:4222"))
    assert r._discovered == ["tls://user:secret@n2:4222"]


def test_a_newer_announcement_replaces_the_older() -> None:
    """A node that left the cluster is no longer tried."""
    r = reader("nats://n1:4222")
    via = urlsplit("nats://n1:4222")
    r._learn({"connect_urls": ["n2:4222", "n3:4222"]}, via)
    r._learn({"connect_urls": ["n3:4222"]}, via)
    assert r._discovered == ["nats://n3:4222"]


@settings(deadline=None)
@given(st.one_of(st.none(), st.integers(), st.text(), st.dictionaries(st.text(), st.none())))
def test_an_info_without_a_server_list_changes_nothing(info: object) -> None:
    """Whatever a server's INFO holds instead of a list of addresses, the list stays."""
    r = reader("nats://n1:4222")
    r._discovered = ["nats://n2:4222"]
    r._learn(info, urlsplit("nats://n1:4222"))
    assert r._discovered == ["nats://n2:4222"]
