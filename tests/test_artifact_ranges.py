"""Artifact downloads a client can resume: `Range` (one range) answers 206 with `Content-Range`,
an unsatisfiable one 416 with a JSON error, `If-Range` with the ETag; and the content type of a
name holding `#` or `?`. Against a real API, NATS and Postgres, with a file uploaded the way an
external worker does."""

from __future__ import annotations

import asyncio
import json
import math
import os
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from hypothesis import strategies as st
from nats.js import JetStreamContext

from jobrunner.common import artifactstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.system import System
from tests.tools.drawn_examples import examples
from tests.tools.runners import wait_status
from tests.tools.uneven_chunks import around_boundaries, stored_unevenly

DATA = bytes(range(256)) * 1200  # 307,200 bytes: three stored chunks (128 KiB each)
SIZE = len(DATA)
CHUNK = artifactstore.CHUNK_BYTES


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=EXTERNAL_TYPES)


async def _uploaded(system: System, client: httpx.AsyncClient, name: str, data: bytes) -> str:
    """The download URL of ``data`` attached by an external job's worker as ``name``."""
    url, _ = await _sent_in_turn(system, client, name, data)
    return url


async def _sent_in_turn(
    system: System, client: httpx.AsyncClient, name: str, *versions: bytes
) -> tuple[str, list[str]]:
    """The download URL of ``name``, sent by an external job's worker once with each of
    ``versions`` in turn (the last one stays), and the ETag each upload was given."""
    etags = []
    async with worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        for data in versions:
            stored = await worker.put(
                f"{job.path}/artifacts/{quote(name)}",
                content=data,
                headers={
                    "Authorization": f"Bearer {job.token}",
                    "Content-Type": "application/octet-stream",
                },
            )
            assert stored.status_code == 201, stored.text
            etags.append(f'"{stored.json()["sha256"]}"')
        await job.report(worker, result={"pages": 1})
    # The job's end is projected after its ArtifactStored: once completed, the file is listed.
    await wait_status(client, job.id, "completed")
    listed = (await client.get(f"/api/jobs/{job.id}/artifacts")).json()
    return str(listed["items"][0]["url"]), etags


def _expected(header: str, size: int) -> tuple[int, bytes | None]:
    """What a client should get for ``Range: header`` (status, body; None for a 416), by the
    rules of RFC 9110 section 14, written plainly as the reference."""
    unit, _, spec = header.partition("=")
    if unit.strip(" \t").lower() != "bytes" or "," in spec:
        return 200, DATA[:size]
    first, dash, last = spec.strip(" \t").partition("-")
    if not dash or not (first.isascii() and last.isascii()):
        return 200, DATA[:size]
    if (first and not first.isdigit()) or (last and not last.isdigit()) or not (first or last):
        return 200, DATA[:size]
    if first and last and _value(last) < _value(first):
        return 200, DATA[:size]
    if first:
        start = _value(first)
        end = min(_value(last), size - 1) if last else size - 1
    else:
        start, end = max(size - _value(last), 0), size - 1
        if _value(last) == 0:
            return 416, None
    if start >= size:
        return 416, None
    return 206, DATA[int(start) : int(end) + 1]


def _value(digits: str) -> float:
    """The number, or infinity past what int() reads (4,300 digits)."""
    return int(digits) if len(digits.lstrip("0")) < 4000 else math.inf


async def test_a_range_answers_206_with_only_those_bytes(system: System) -> None:
    """`Range: bytes=a-b`, `a-` and `-n` answer 206 with those bytes and a Content-Range; every
    answer says `Accept-Ranges: bytes`. A HEAD ignores Range (RFC 9110 section 14.2): 200 with
    the whole file's length."""
    async with system.client() as client:
        url = await _uploaded(system, client, "pages/big.bin", DATA)
        whole = await client.get(url)
        middle = await client.get(url, headers={"Range": "bytes=131000-262200"})
        rest = await client.get(url, headers={"Range": "bytes=300000-"})
        tail = await client.get(url, headers={"Range": "bytes=-10"})
        head = await client.head(url, headers={"Range": "bytes=5-9"})
    assert (whole.status_code, whole.headers["accept-ranges"]) == (200, "bytes")
    assert whole.content == DATA, len(whole.content)
    assert middle.status_code == 206
    assert middle.headers["content-range"] == f"bytes 131000-262200/{SIZE}"
    assert middle.content == DATA[131000:262201], len(middle.content)
    assert middle.headers["accept-ranges"] == "bytes"
    assert rest.headers["content-range"] == f"bytes 300000-{SIZE - 1}/{SIZE}"
    assert rest.content == DATA[300000:], len(rest.content)
    assert (tail.status_code, tail.content == DATA[-10:]) == (206, True)
    assert (head.status_code, head.content, "content-range" in head.headers) == (200, b"", False)
    assert (head.headers["content-length"], head.headers["accept-ranges"]) == (str(SIZE), "bytes")


async def test_a_ranged_download_lets_its_reader_go_after_the_last_byte(
    system: System, js: JetStreamContext, settings: Settings
) -> None:
    """The first 10 bytes of a file of three chunks: once they are sent, no consumer of the
    artifact store is left reading the rest."""
    store = artifactstore.stream_name(Names(settings.prefix))
    async with system.client() as client:
        url = await _uploaded(system, client, "big.bin", DATA)
        first = await client.get(url, headers={"Range": "bytes=0-9"})
        left = (await js.stream_info(store)).state.consumer_count
    assert (first.status_code, first.content) == (206, DATA[:10])
    assert left == 0


# Chunks of another client's sizes (its max_chunk_size 128 KiB): one byte, a part, a whole one.
UNEVEN_SIZES = [100_000, 1, CHUNK, 50_000, SIZE - 100_001 - CHUNK - 50_000]


async def test_a_file_stored_in_uneven_chunks_resumes_byte_exact(
    system: System, js: JetStreamContext, settings: Settings
) -> None:
    """A file whose object another NATS client stored again in chunks of other sizes (the same
    bytes): resumed at each chunk's first byte, a byte either side of it and its last byte, each
    answer is 206 with exactly the file's bytes from there, and `If-Range` with its ETag holds."""
    names = Names(settings.prefix)
    data = os.urandom(SIZE)  # no repeating pattern: a misplaced byte shows
    async with system.client() as client:
        url = await _uploaded(system, client, "big.bin", data)
        job_id = url.split("/")[3]
        object_name = names.artifact_object(job_id, "big.bin")
        await stored_unevenly(js, names, object_name, data, UNEVEN_SIZES)
        etag = (await client.head(url)).headers["etag"]
        wrong = []
        for start in [*around_boundaries(UNEVEN_SIZES), SIZE - 1]:
            resumed = await client.get(url, headers={"Range": f"bytes={start}-", "If-Range": etag})
            if (resumed.status_code, resumed.content) != (206, data[start:]):
                wrong.append((start, resumed.status_code, len(resumed.content)))
    assert wrong == []


async def test_a_range_past_the_end_answers_416_with_the_size(system: System) -> None:
    """A range that starts past the end answers 416 RANGE_NOT_SATISFIABLE as JSON, with
    `Content-Range: bytes */size`; a zero-length suffix too."""
    async with system.client() as client:
        url = await _uploaded(system, client, "big.bin", DATA)
        past = await client.get(url, headers={"Range": f"bytes={SIZE}-"})
        empty_suffix = await client.get(url, headers={"Range": "bytes=-0"})
    for answer in (past, empty_suffix):
        assert answer.status_code == 416, answer.text[:200]
        assert answer.headers["content-range"] == f"bytes */{SIZE}"
        assert answer.json()["error"]["code"] == "RANGE_NOT_SATISFIABLE"
        assert answer.headers["accept-ranges"] == "bytes"


async def test_if_range_resumes_only_the_same_bytes(system: System) -> None:
    """`If-Range` with the ETag resumes (206); with any other tag the whole file comes (200)."""
    async with system.client() as client:
        url = await _uploaded(system, client, "big.bin", DATA)
        etag = (await client.head(url)).headers["etag"]
        same = await client.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
        other = await client.get(url, headers={"Range": "bytes=100-", "If-Range": '"other"'})
        weak = await client.get(url, headers={"Range": "bytes=100-", "If-Range": f"W/{etag}"})
    assert (same.status_code, same.content == DATA[100:]) == (206, True)
    assert (other.status_code, other.content == DATA) == (200, True)
    assert (weak.status_code, weak.content == DATA) == (200, True)


async def test_if_range_with_the_tag_of_bytes_sent_before_gets_the_new_file_whole(
    system: System,
) -> None:
    """The name sent again with new bytes: a client resuming with the first upload's ETag gets
    the new file whole (200, its own ETag), never a mix of the two."""
    newer = DATA[::-1]
    async with system.client() as client:
        url, (old_etag, new_etag) = await _sent_in_turn(system, client, "big.bin", DATA, newer)
        resumed = await client.get(url, headers={"Range": "bytes=100-", "If-Range": old_etag})
    assert old_etag != new_etag
    assert (resumed.status_code, resumed.headers["etag"]) == (200, new_etag)
    assert resumed.content == newer, len(resumed.content)


async def _forget_digests(js: JetStreamContext, names: Names) -> None:
    """Each stored object's description published again without its digest, as another NATS
    client may have written it."""
    store = artifactstore.stream_name(names)
    described = f"$O.{names.artifacts_bucket}.M.>"
    subjects = (await js.stream_info(store, subjects_filter=described)).state.subjects or {}
    for subject in subjects:
        description = json.loads((await js.get_last_msg(store, subject)).data or b"{}")
        description.pop("digest", None)
        await js.publish(subject, json.dumps(description).encode(), headers={"Nats-Rollup": "sub"})


async def test_if_range_is_not_trusted_for_a_file_stored_without_a_digest(
    system: System, js: JetStreamContext, settings: Settings
) -> None:
    """A stored file whose description has no SHA-256 is labelled with the listing's, which may
    describe other bytes: a resume with that tag gets the file whole (200), never a splice."""
    async with system.client() as client:
        url = await _uploaded(system, client, "big.bin", DATA)
        await _forget_digests(js, Names(settings.prefix))
        etag = (await client.head(url)).headers["etag"]
        resumed = await client.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
        plain = await client.get(url, headers={"Range": "bytes=100-"})
    assert (resumed.status_code, resumed.content == DATA) == (200, True)
    assert (plain.status_code, plain.content == DATA[100:]) == (206, True)


async def test_if_none_match_with_the_tag_in_a_list_or_weak_or_star_answers_304(
    system: System,
) -> None:
    """A cache asking `If-None-Match` with the ETag among others, its weak form or `*` is told
    304 (RFC 9110 section 13.1.2, weak comparison); another tag gets the file."""
    async with system.client() as client:
        url = await _uploaded(system, client, "big.bin", DATA)
        etag = (await client.head(url)).headers["etag"]
        answers = {
            sent: await client.get(url, headers={"If-None-Match": sent})
            for sent in (etag, f'"other", {etag}', f"W/{etag}", "*", '"other"')
        }
    assert {sent: a.status_code for sent, a in answers.items()} == {
        etag: 304,
        f'"other", {etag}': 304,
        f"W/{etag}": 304,
        "*": 304,
        '"other"': 200,
    }


async def test_an_empty_file_with_a_range_is_served_whole(system: System) -> None:
    """A suffix of an empty file holds no byte a 206 could describe: the (empty) file comes
    whole (200); a range from byte 0 on is past its end (416, `bytes */0`)."""
    async with system.client() as client:
        url = await _uploaded(system, client, "empty.txt", b"")
        suffix = await client.get(url, headers={"Range": "bytes=-5"})
        from_start = await client.get(url, headers={"Range": "bytes=0-"})
    assert (suffix.status_code, suffix.content, suffix.headers["content-length"]) == (200, b"", "0")
    assert (from_start.status_code, from_start.headers["content-range"]) == (416, "bytes */0")


_HOSTILE = [
    "bytes=0-1,5-9",
    "bytes=" + ",".join(f"{i}-{i}" for i in range(2000)),
    "bytes=99999999999999999999999999999999999999-",
    "bytes=0-99999999999999999999999999999999999999",
    "bytes=-99999999999999999999999999999999999999",
    "bytes=" + "9" * 5000 + "-",
    "bytes=-1-2",
    "bytes=5-1",
    "bytes=abc",
    "bytes=",
    "bytes=-",
    "bytes=\u0661-\u0662",  # Arabic-Indic digits: no numbers of HTTP's
    "items=0-1",
    "bytes 0-1",
    "",
]


async def test_hostile_and_generated_ranges_never_fail_the_download(system: System) -> None:
    """Whatever a Range header holds (huge numbers, negative, garbage, many ranges, generated
    ones), the answer is the whole file, the asked bytes or a 416 — never a 500."""
    numbers = st.one_of(st.integers(0, SIZE + 5).map(str), st.text("0123456789", max_size=25))
    generated = st.one_of(
        st.builds(lambda a, b: f"bytes={a}-{b}", numbers, numbers),
        st.builds(lambda a: f"bytes={a}-", numbers),
        st.builds(lambda b: f"bytes=-{b}", numbers),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
    )
    headers = _HOSTILE + examples(generated, 150)
    async with system.client() as client:
        url = await _uploaded(system, client, "big.bin", DATA)
        for sent in headers:
            header = sent.strip(" \t")  # as the server reads it (the client refuses to send it)
            answer = await client.get(url, headers={b"Range": header.encode()})
            status, body = _expected(header, SIZE)
            assert answer.status_code == status, (header[:80], answer.text[:200])
            if body is None:
                assert answer.json()["error"]["code"] == "RANGE_NOT_SATISFIABLE"
            else:
                assert answer.content == body, (header[:80], len(answer.content))


async def test_a_file_is_served_as_the_type_its_suffix_names(system: System) -> None:
    """`sub dir/ä b#%.txt` (a space, a letter outside ASCII, `#` and `%` in its URL) is served
    as text/plain and `page.html` as text/html, as listed (not application/octet-stream), the
    page in a sandbox should a browser show it."""
    async with system.client() as client:
        url = await _uploaded(system, client, "sub dir/ä b#%.txt", b"hello\n")
        served = await client.get(url)
        page = await client.get(await _uploaded(system, client, "page.html", b"<p>hi</p>"))
    assert served.status_code == 200, served.text[:200]
    assert served.headers["content-type"] == "text/plain"
    assert served.content == b"hello\n"
    assert page.headers["content-type"] == "text/html"
    assert page.headers["content-security-policy"].startswith("sandbox;")
    assert page.headers["content-disposition"].startswith("attachment;")


async def test_nats_restarted_while_a_resume_finds_its_chunk_answers_503_then_resumes(
    settings: Settings, own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS killed and started again while the API walks the chunks' sizes to the range's
    first byte (before the answer starts): the client gets `503 ARTIFACTS_UNAVAILABLE` with
    `Retry-After`, not a 206 cut short; asked again once NATS is back, the 206 is the file's
    bytes from there."""
    own = msgspec.structs.replace(settings, nats_url=own_nats.url, artifact_read_idle_seconds=3.0)
    start = 2 * CHUNK + 5
    servers = [own_nats]
    restarts: list[asyncio.Task[None]] = []

    async def restarted() -> None:
        await asyncio.sleep(0.5)
        servers.append(EmbeddedNats(own_nats.store_dir, port=own_nats.port))
        await asyncio.to_thread(servers[-1].start)

    payload_size = artifactstore._payload_size

    def nats_killed_at_the_first_size(msg: Any) -> int:
        if not restarts:
            own_nats.kill()
            restarts.append(asyncio.get_running_loop().create_task(restarted()))
        return payload_size(msg)

    try:
        async with System(own) as running:
            await running.start()
            async with running.client() as client:
                url = await _uploaded(running, client, "big.bin", DATA)
                monkeypatch.setattr(artifactstore, "WALK_BATCH_CHUNKS", 1)
                monkeypatch.setattr(artifactstore, "_payload_size", nats_killed_at_the_first_size)
                cut = await client.get(url, headers={"Range": f"bytes={start}-"})
                await asyncio.wait_for(restarts[0], 60)
                resumed = await _answered_once_nats_is_back(client, url, start)
    finally:
        for server in servers[1:]:
            server.stop()
    assert cut.status_code == 503, cut.text
    assert (cut.json()["error"]["code"], cut.headers.get("retry-after")) == (
        "ARTIFACTS_UNAVAILABLE",
        "2",
    )
    assert (resumed.status_code, resumed.content == DATA[start:]) == (206, True)


async def _answered_once_nats_is_back(
    client: httpx.AsyncClient, url: str, start: int
) -> httpx.Response:
    """The answer to ``Range: bytes=start-`` once it is no 503 (the API reconnecting)."""
    async with asyncio.timeout(30):
        while True:
            answer = await client.get(url, headers={"Range": f"bytes={start}-"})
            if answer.status_code != 503:
                return answer
            await asyncio.sleep(0.2)
