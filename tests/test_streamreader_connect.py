"""The stream reader's connection: a deadline on every step, the next server of the list when one
misses it, a clear error after all, and the same TLS settings as nats-py."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from jobrunner.common import eventstore
from jobrunner.common.exitcodes import CONFIG
from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.settings import Settings, SettingsError
from jobrunner.common.streamreader import StreamReader, StreamReaderError
from jobrunner.contracts.names import Names
from jobrunner.embedded.scratch import scratch_dir
from tests.servers import delete_streams
from tests.stalling_proxy import StallingProxy, silent_server
from tests.tls_nats import ConfiguredNats, TlsFiles, nkey_nats, operator_nats, tls_nats

TIMEOUT = 1.0  # each connect step's deadline in these tests
SHORTER = TIMEOUT * 0.3  # a stall just shorter: the server is kept
LONGER = TIMEOUT * 3  # a stall just longer: the server is left for the next one
INFO, SECOND_REPLY = 0, 1  # chunks the server sends: INFO, then the TLS reply or the PONG


@pytest.fixture
async def plain(nats_server_url: str) -> AsyncIterator[Settings]:
    """Settings on the shared server with a stream of 10 events."""
    private = Settings(nats_url=nats_server_url, prefix=f"t{uuid.uuid4().hex[:10]}")
    await publish(private, 10)
    yield private
    await delete_streams(nats_server_url, private.prefix)


async def publish(settings: Settings, count: int) -> None:
    nc = await eventstore.connect(settings, "test")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, Names(settings.prefix), settings)
    for n in range(count):
        await js.publish(f"{settings.prefix}.job.j{n}.lines", b"x")
    await eventstore.close(nc)


async def read_all(
    settings: Settings, servers: list[str], count: int = 10, reader_settings: Settings | None = None
) -> list[int]:
    """Open a reader on ``servers`` (with the deadlines and TLS of ``reader_settings``, else
    ``settings``) and read ``count`` events."""
    names = Names(settings.prefix)
    connection = NatsConnection.from_settings(reader_settings or settings)
    nc = await eventstore.connect(settings, "test")
    reader = StreamReader(
        nc.jetstream(), servers, names.stream, names.all_subjects, connection=connection
    )
    seqs: list[int] = []
    try:
        await asyncio.wait_for(reader.open(1), timeout=30)
        async for batch in reader.batches():
            seqs += [seq for seq, _ in batch]
            if len(seqs) >= count:
                break
    finally:
        await reader.close()
        await eventstore.close(nc)
    return seqs


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.rsplit("/", 1)[-1].rpartition("@")[2].partition(":")
    return host, int(port)


@pytest.mark.parametrize(
    ("hold", "step"), [(INFO, "no INFO"), (SECOND_REPLY, "no answer to CONNECT")]
)
async def test_a_server_that_stalls_a_connect_step_longer_than_the_timeout_is_left_for_the_next(
    plain: Settings, hold: int, step: str
) -> None:
    """A server that accepts but stalls longer than the connect timeout is logged and skipped;
    the events are read from the next server of the list."""
    settings = Settings(
        nats_url=plain.nats_url, prefix=plain.prefix, nats_connect_timeout_seconds=TIMEOUT
    )
    async with StallingProxy(*host_port(plain.nats_url), hold=hold, seconds=LONGER) as stalled:
        with structlog.testing.capture_logs() as logs:
            seqs = await read_all(settings, [stalled.url(), plain.nats_url])
    assert seqs == list(range(1, 11))
    failed = [e for e in logs if e["event"] == "stream reader cannot connect"]
    assert [e["server"] for e in failed] == [f"127.0.0.1:{stalled.port}"]
    assert step in failed[0]["reason"]


@pytest.mark.parametrize("hold", [INFO, SECOND_REPLY])
async def test_a_server_that_stalls_a_connect_step_shorter_than_the_timeout_is_kept(
    plain: Settings, hold: int
) -> None:
    """A server slower than usual but within the connect timeout is read from."""
    settings = Settings(
        nats_url=plain.nats_url, prefix=plain.prefix, nats_connect_timeout_seconds=TIMEOUT
    )
    async with StallingProxy(*host_port(plain.nats_url), hold=hold, seconds=SHORTER) as slow:
        with structlog.testing.capture_logs() as logs:
            seqs = await read_all(settings, [slow.url(), "nats://127.0.0.1:1"])
    assert seqs == list(range(1, 11))
    assert not [e for e in logs if e["event"] == "stream reader cannot connect"]


# A SYN the kernel dropped is sent again after about 1 s: the TCP step is tested with a longer
# timeout, so "just shorter" (the queue freed after SHORTER) can succeed on the resent SYN.
TCP_TIMEOUT = 2.5


@pytest.mark.parametrize(
    ("accept_after", "connects"), [(SHORTER, True), (math.inf, False)], ids=["shorter", "longer"]
)
async def test_a_tcp_connect_without_answer_is_given_up_after_the_connect_timeout(
    plain: Settings, accept_after: float, connects: bool
) -> None:
    """A server whose accept queue is full answers no SYN: within the connect timeout the
    connection is still made when it frees up; past it the server is logged and the next one
    is used."""
    settings = Settings(
        nats_url=plain.nats_url, prefix=plain.prefix, nats_connect_timeout_seconds=TCP_TIMEOUT
    )
    host, port = host_port(plain.nats_url)
    async with StallingProxy(host, port, accept_after=accept_after) as busy:
        with structlog.testing.capture_logs() as logs:
            seqs = await read_all(settings, [busy.url(), plain.nats_url])
    assert seqs == list(range(1, 11))
    failed = [e for e in logs if e["event"] == "stream reader cannot connect"]
    if connects:
        assert failed == []  # the first server, once its queue freed up, was the one read
    else:
        assert [e["server"] for e in failed] == [f"127.0.0.1:{busy.port}"]
        assert "no TCP connection within 2.5 s" in failed[0]["reason"]


async def test_when_every_server_is_silent_the_reader_fails_naming_each_of_them(
    plain: Settings,
) -> None:
    """Every server accepts and says nothing: after each one's deadline, one clear error names
    every server and why, instead of a projector that hangs without a word."""
    settings = Settings(
        nats_url=plain.nats_url, prefix=plain.prefix, nats_connect_timeout_seconds=TIMEOUT
    )
    async with silent_server() as first, silent_server() as second:
        with pytest.raises(StreamReaderError) as raised:
            await read_all(settings, [first, second])
    message = str(raised.value)
    for url in (first, second):
        assert f"{host_port(url)[0]}:{host_port(url)[1]}: no INFO from the server within 1 s" in (
            message
        )


def tls_settings(server_port: int, files: TlsFiles, prefix: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "nats_url": f"tls://127.0.0.1:{server_port}",
        "prefix": prefix,
        "nats_tls_ca_file": str(files.ca),
        "nats_tls_cert_file": str(files.client_cert),
        "nats_tls_key_file": str(files.client_key),
        "nats_connect_timeout_seconds": TIMEOUT,
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


async def test_a_tls_server_that_verifies_clients_is_read_with_the_settings_certificates() -> None:
    """With the CA and client certificate in the settings, nats-py and the stream reader both
    connect to a server that requires TLS and verifies client certificates."""
    with tls_nats(verify_clients=True) as (server, files):
        settings = tls_settings(server.port, files, "ttls")
        await publish(settings, 10)
        assert await read_all(settings, [settings.nats_url]) == list(range(1, 11))


async def test_a_tls_server_signed_by_another_authority_is_refused_clearly() -> None:
    """A server whose certificate the configured CA did not sign is refused with the reason."""
    with tls_nats(verify_clients=False) as (server, files):
        good = tls_settings(server.port, files, "ttls")
        await publish(good, 1)
        wrong_ca = tls_settings(server.port, files, "ttls", nats_tls_ca_file=str(files.other_ca))
        with pytest.raises(StreamReaderError, match=r"certificate verify failed"):
            await read_all(good, [wrong_ca.nats_url], count=1, reader_settings=wrong_ca)


@pytest.mark.parametrize(("seconds", "connects"), [(SHORTER, True), (LONGER, False)])
async def test_a_tls_handshake_is_given_up_after_the_connect_timeout(
    seconds: float, connects: bool
) -> None:
    """A TLS handshake that stalls just shorter than the connect timeout completes; one that
    stalls longer is given up with the reason, and never hangs."""
    with tls_nats(verify_clients=True) as (server, files):
        settings = tls_settings(server.port, files, "ttls")
        await publish(settings, 10)
        async with StallingProxy("127.0.0.1", server.port, SECOND_REPLY, seconds) as proxy:
            # Verified for 127.0.0.1, the name in the server's certificate.
            servers = [proxy.url("tls")]
            if connects:
                assert await read_all(settings, servers) == list(range(1, 11))
            else:
                started = time.monotonic()
                with pytest.raises(StreamReaderError, match="no TLS handshake within 1 s"):
                    await read_all(settings, servers)
                assert time.monotonic() - started < 30  # a bound, not a timing: it did not hang


def test_a_tls_setting_that_cannot_be_honoured_is_refused_at_start(tmp_path: Path) -> None:
    """A missing CA file, or a key without its certificate, stops the start with the setting's
    name instead of failing on the first connect."""
    with pytest.raises(SettingsError, match=r"nats_tls_ca_file: .* is not a readable file"):
        NatsConnection.from_settings(Settings(nats_tls_ca_file=str(tmp_path / "missing.pem")))
    key = tmp_path / "client.key"
    key.write_text("not a key")
    with pytest.raises(SettingsError, match="nats_tls_key_file is set without nats_tls_cert_file"):
        NatsConnection.from_settings(Settings(nats_tls_key_file=str(key)))
    with pytest.raises(ValueError, match="nats_connect_timeout_seconds = 0 is out of range"):
        Settings(nats_connect_timeout_seconds=0)


def test_a_server_url_the_stream_reader_cannot_speak_is_refused_at_start() -> None:
    """A websocket URL (which nats-py would take but the projector's reader cannot) stops the
    start with a clear message, not a projector that never connects."""
    with pytest.raises(SettingsError, match=r"nats_url: ws:// is not supported \(use nats:// or"):
        NatsConnection.from_settings(Settings(nats_url="nats://a:4222,ws://b:8080"))
    with pytest.raises(SettingsError, match=r"nats_url: b: the port is not a number"):
        NatsConnection.from_settings(Settings(nats_url="nats://a:4222,nats://u:p@b:42x2"))
    assert NatsConnection.from_settings(Settings(nats_url="a:4222, tls://b")).servers == [
        "a:4222",
        "tls://b",
    ]


async def test_a_server_with_nkey_users_is_read_with_the_seed_and_a_stranger_is_refused() -> None:
    """With ``nats_nkey_seed_file``, nats-py and the stream reader both sign the server's nonce
    and read; a seed the server does not know is refused with the server's reason."""
    with nkey_nats() as (server, seed, stranger):
        url = f"nats://127.0.0.1:{server.port}"
        settings = Settings(nats_url=url, prefix="tnkey", nats_nkey_seed_file=str(seed))
        await publish(settings, 10)
        assert await read_all(settings, [url]) == list(range(1, 11))
        unknown = Settings(nats_url=url, prefix="tnkey", nats_nkey_seed_file=str(stranger))
        with pytest.raises(StreamReaderError, match=r"(?i)authorization violation"):
            await read_all(settings, [url], reader_settings=unknown)


def test_an_nkey_seed_file_that_holds_no_seed_is_refused_at_start(tmp_path: Path) -> None:
    """A seed file that is missing or holds something else stops the start, naming the setting."""
    with pytest.raises(SettingsError, match=r"nats_nkey_seed_file: .* cannot be read"):
        NatsConnection.from_settings(Settings(nats_nkey_seed_file=str(tmp_path / "none.nk")))
    garbage = tmp_path / "garbage.nk"
    garbage.write_text("SUAAAA-not-a-seed")
    with pytest.raises(SettingsError, match=r"nats_nkey_seed_file: .* holds no NKey seed"):
        NatsConnection.from_settings(Settings(nats_nkey_seed_file=str(garbage)))


async def test_a_server_with_a_token_is_read_with_the_token_of_the_url() -> None:
    """A token in the URL (``nats://<token>@host``) authenticates nats-py and the stream reader
    alike; a wrong one is refused with the server's reason."""
    with scratch_dir("jobrunner-test-token-nats-") as root:
        server = ConfiguredNats(root, 'authorization { token: "t0ken-s3cret" }\n')
        server.start()
        try:
            url = f"nats://t0ken-s3cret@127.0.0.1:{server.port}"
            settings = Settings(nats_url=url, prefix="ttoken")
            await publish(settings, 10)
            assert await read_all(settings, [url]) == list(range(1, 11))
            wrong = url.replace("s3cret", "wrong")
            with pytest.raises(StreamReaderError, match=r"(?i)authorization violation") as raised:
                await read_all(settings, [wrong])
            assert "s3cret" not in str(raised.value)
            assert "wrong" not in str(raised.value)
        finally:
            server.stop()


async def test_a_server_with_jwt_accounts_is_read_with_a_creds_file() -> None:
    """With ``nats_creds_file`` (user JWT and seed), nats-py and the stream reader both sign in
    to a server in operator mode and read; a user of an unknown account is refused."""
    with operator_nats() as (server, creds, stranger):
        url = f"nats://127.0.0.1:{server.port}"
        settings = Settings(nats_url=url, prefix="tcreds", nats_creds_file=str(creds))
        await publish(settings, 10)
        assert await read_all(settings, [url]) == list(range(1, 11))
        unknown = Settings(nats_url=url, prefix="tcreds", nats_creds_file=str(stranger))
        with pytest.raises(StreamReaderError, match=r"(?i)authorization violation"):
            await read_all(settings, [url], reader_settings=unknown)


def test_a_creds_file_without_a_jwt_and_seed_is_refused_at_start(tmp_path: Path) -> None:
    """A creds file that is missing or is not one stops the start, naming the setting."""
    with pytest.raises(SettingsError, match=r"nats_creds_file: .* cannot be read"):
        NatsConnection.from_settings(Settings(nats_creds_file=str(tmp_path / "none.creds")))
    garbage = tmp_path / "garbage.creds"
    garbage.write_text("-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n")
    with pytest.raises(SettingsError, match=r"nats_creds_file: .* is not a creds file"):
        NatsConnection.from_settings(Settings(nats_creds_file=str(garbage)))


async def test_the_services_connection_leaves_a_silent_server_for_the_next_and_says_why(
    plain: Settings,
) -> None:
    """The services' own (nats-py) connection takes the same deadline: a silent first server is
    logged with a reason and the next one is used."""
    async with silent_server() as silent:
        settings = Settings(
            nats_url=f"{silent},{plain.nats_url}", nats_connect_timeout_seconds=TIMEOUT
        )
        with structlog.testing.capture_logs() as logs:
            # In the listed order: nats-py otherwise shuffles the servers to spread clients.
            connecting = eventstore.connect(settings, "test", dont_randomize=True)
            nc = await asyncio.wait_for(connecting, timeout=30)
        try:
            assert nc.connected_url is not None
            assert nc.connected_url.port == host_port(plain.nats_url)[1]
        finally:
            await eventstore.close(nc)
    assert [e["error"] for e in logs if e["event"] == "nats error"] == ["TimeoutError"]


@pytest.mark.parametrize("command", ["projector", "runner", "api"])
async def test_every_service_refuses_a_nats_setting_it_cannot_honour_with_one_line(
    command: str, tmp_path: Path
) -> None:
    """``jobrunner <service>`` with a TLS file that does not exist exits at once with the
    setting's name, not with a traceback or a service that keeps retrying."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobrunner.cli",
        command,
        env={**os.environ, "JOBRUNNER_NATS_TLS_CA_FILE": str(tmp_path / "missing-ca.pem")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == CONFIG
    assert err.decode().strip() == (
        f"jobrunner: nats_tls_ca_file: {tmp_path / 'missing-ca.pem'} is not a readable file"
    )
