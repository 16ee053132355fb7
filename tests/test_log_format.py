"""Every line a service writes is one JSON object, the libraries' lines included."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import prometheus_client

from jobrunner.common.logging import CHATTY_LIBRARIES
from jobrunner.common.settings import Settings
from jobrunner.embedded.serverprocess import free_port
from tests.cli_support import cli_env, start_cli


async def answering(url: str, timeout: float = 90) -> httpx.Response:
    """The first 200 of ``url`` (the API is up), polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return response
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{url} did not answer 200"
            await asyncio.sleep(0.2)


async def send_garbage(port: int) -> None:
    """Bytes that are no HTTP request: uvicorn logs a warning through the standard library."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x00\x01 this is not HTTP\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.read(), 30)
    writer.close()


async def test_the_api_writes_only_json_lines_after_a_metrics_scrape(settings: Settings) -> None:
    """`jobrunner api` off a terminal: a /metrics answer that reads a peer (httpx) and a bad
    request (the API's warning) leave no plain-text line among the JSON ones, and no httpx
    request line."""
    peer, _ = prometheus_client.start_http_server(0, "127.0.0.1")
    port = free_port()
    env = {
        **cli_env(settings),
        "JOBRUNNER_PORT": str(port),
        "JOBRUNNER_AUTH": "false",
        "JOBRUNNER_LOG_FORMAT": "auto",
        "JOBRUNNER_METRICS_PEERS": f"peer=http://127.0.0.1:{peer.server_port}",
        # The peer answers at once; on a loaded machine the default 2 s could still leave it
        # out (peer_up 0), which is not what this test is about.
        "JOBRUNNER_METRICS_PEER_TIMEOUT_SECONDS": "10",
    }
    api = await start_cli("api", env=env, output=asyncio.subprocess.PIPE)
    try:
        metrics = await answering(f"http://127.0.0.1:{port}/metrics")
        assert 'jobrunner_metrics_peer_up{service="peer"} 1.0' in metrics.text
        await send_garbage(port)
    finally:
        api.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(api.communicate(), 60)
        peer.shutdown()
    lines = [line for line in output.decode().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a line that is not JSON: {line!r}\n{output.decode()}") from None
    assert all(isinstance(record, dict) for record in records), lines
    # httpx's INFO line per scrape would be JSON too: the quieted libraries write none here.
    chatty = [r for r in records if str(r.get("logger", "")).split(".")[0] in CHATTY_LIBRARIES]
    assert not chatty, chatty
    assert any(record.get("event") == "malformed request refused" for record in records), lines
