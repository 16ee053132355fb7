"""Hostile artifact names, generated (Hypothesis, a fixed seed): an external worker's upload
either stores the name exactly as sent, listed and downloaded back byte for byte under it, or is
refused ``400 INVALID_ARTIFACT_NAME``; a download of any path answers 200/400/404 with a code,
never a 500; the API keeps its NATS connection throughout."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import msgspec
import pytest
from hypothesis import strategies as st

from jobrunner.common import artifactnames
from jobrunner.common.settings import Settings
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.system import System
from tests.tools.drawn_examples import examples

parts = st.text(min_size=0, max_size=40) | st.sampled_from(
    [
        ".",
        "..",
        "",
        " ",
        "a b",
        "%2F",
        "%00",
        "?x=1",
        "#frag",
        ";",
        "\u202e",
        "\ufeff",
        "\U0001d538" * 63,
    ]
)
names = st.lists(parts, min_size=1, max_size=4).map("/".join) | st.text(max_size=60)
raw_paths = st.lists(
    st.sampled_from(
        ["a", "%2F", "%2E%2E", "%FF", "%C0%AF", "%00", "%5C", "..", ".", "", "%", "%G1"]
    ),
    min_size=1,
    max_size=5,
).map("/".join)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A longer lease than the tests' 3 s: the job must outlive some hundred requests on a
    # loaded machine (one run lost it and every later upload answered JOB_FINISHED).
    return msgspec.structs.replace(settings, job_types_file=EXTERNAL_TYPES, lease_ttl_seconds=15.0)


def _url_path(name: str) -> str:
    """The name in a URL as sent: each part quoted, and ``.``/``..`` as ``%2E`` (the client
    would otherwise resolve them away before sending, RFC 3986)."""
    return "/".join(
        quote(part, safe="", errors="surrogatepass").replace(".", "%2E")
        if part in (".", "..")
        else quote(part, safe="", errors="surrogatepass")
        for part in name.split("/")
    )


def _code(response: httpx.Response) -> object:
    return response.json().get("error", {}).get("code")


def _is_safe(name: str) -> bool:
    try:
        artifactnames.check_new_name(name)
    except artifactnames.BadArtifactName:
        return False
    return True


async def test_generated_names_are_stored_identically_or_refused(system: System) -> None:
    """Before the fix ``a//b``, ``dir/`` and ``/x`` were stored silently as ``a/b``, ``dir``
    and ``x`` (Litestar collapses and strips slashes before routing)."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=1)
        headers = {"Authorization": f"Bearer {job.token}"}
        stored: dict[str, bytes] = {}
        problems = []
        for i, name in enumerate(examples(names, 200)):
            body = f"file {i}".encode()
            url = f"{job.path}/artifacts/{_url_path(name)}"
            put = await worker.put(url, content=body, headers=headers)
            if _is_safe(name):
                if put.status_code != 201 or put.json()["name"] != name:
                    problems.append(f"{name!r}: {put.status_code} {put.text[:200]}")
                else:
                    stored[name] = body
            elif not name.strip("/"):
                # No name in the URL at all: no upload route matches it.
                if (put.status_code, _code(put)) != (404, "NOT_FOUND"):
                    problems.append(f"{name!r}: {put.status_code} {put.text[:200]}")
            elif (put.status_code, _code(put)) != (400, "INVALID_ARTIFACT_NAME"):
                problems.append(f"{name!r} should be refused: {put.status_code} {put.text[:200]}")
        for name, body in stored.items():
            got = await client.get(f"/api/jobs/{job.id}/artifacts/{_url_path(name)}")
            if got.status_code != 200 or got.content != body:
                problems.append(f"{name!r} downloads {got.status_code} {got.content[:80]!r}")
        for path in examples(raw_paths, 80):
            got = await client.get(f"/api/jobs/{job.id}/artifacts/{path}")
            if got.status_code not in (200, 400, 404) or (
                got.status_code != 200 and not got.json()["error"]["code"]
            ):
                problems.append(f"download {path!r}: {got.status_code} {got.text[:200]}")
        health = await client.get("/health")
    assert not problems, "\n".join(problems)
    assert health.status_code == 200, health.text


async def test_a_double_slash_before_the_name_is_no_concern_of_the_name(system: System) -> None:
    """``/api//jobs/<id>/artifacts/x``: the ``//`` is in the route's part of the path, the name
    ``x`` is fine. Before, the whole raw path was checked and both answered 400 "the name has an
    empty part". A ``//`` at the name's start is still the name's (refused)."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=1)
        headers = {"Authorization": f"Bearer {job.token}"}
        doubled = job.path.replace("/api/external/jobs/", "/api//external//jobs//")
        put = await worker.put(f"{doubled}//artifacts/x", content=b"x's", headers=headers)
        got = await client.get(f"/api//jobs//{job.id}//artifacts/x")
        empty_first = await worker.put(f"{job.path}/artifacts//y", content=b"y", headers=headers)
        empty_first_get = await client.get(f"/api/jobs/{job.id}/artifacts//x")
    assert (put.status_code, put.json()["name"]) == (201, "x"), put.text
    assert (got.status_code, got.content) == (200, b"x's"), got.text
    assert (empty_first.status_code, _code(empty_first)) == (400, "INVALID_ARTIFACT_NAME")
    assert (empty_first_get.status_code, _code(empty_first_get)) == (400, "INVALID_ARTIFACT_NAME")
