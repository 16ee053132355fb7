"""Webhook URLs and headers as a client gives them: checked for form, shown without secrets."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

import h11
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.common.jobtypes import JobTypeConfigError, load_job_types
from jobrunner.common.webhookurl import check, public_url, url_problems
from jobrunner.contracts.events import MAX_WEBHOOK_URL_CHARS, WebhookTarget
from jobrunner.services.notifier.sender import Destination


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://example.com/x", "UNSUPPORTED_SCHEME"),
        ("file:///etc/passwd", "UNSUPPORTED_SCHEME"),
        ("javascript:alert(1)", "UNSUPPORTED_SCHEME"),
        ("https://user:pw@example.com/", "USERINFO_NOT_ALLOWED"),
        ("https://@example.com/", "USERINFO_NOT_ALLOWED"),
        ("https:///path", "MISSING_HOST"),
        ("https://example.com:99999/", "INVALID_URL"),
        ("https://example.com/a b", "INVALID_URL"),
        ("https://example.com/\r\nX: y", "INVALID_URL"),
        ("https://example.com/" + "a" * MAX_WEBHOOK_URL_CHARS, "TOO_LONG"),
    ],
)
def test_bad_url_is_refused_with_its_reason(url: str, code: str) -> None:
    """Each kind of bad URL gets its own code."""
    assert code in [c for c, _ in url_problems(url)]


@pytest.mark.parametrize(
    "url", ["https://example.com/hooks", "http://10.0.0.1:8080/x?token=1", "https://[2001:db8::1]/"]
)
def test_good_url_passes(url: str) -> None:
    """http and https URLs with a host pass (their address is judged at delivery)."""
    assert url_problems(url) == []


@settings(deadline=None, max_examples=500)
@given(st.text(max_size=300))
def test_any_text_gets_an_answer_never_an_exception(url: str) -> None:
    """Whatever a client sends as URL, the check answers; what it accepts is http(s) with a host
    and no user info."""
    if url_problems(url):
        return
    parts = urlsplit(url)
    assert parts.scheme in ("http", "https")
    assert parts.hostname
    assert parts.username is None


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=200), st.text(max_size=200))
def test_shown_url_never_carries_query_or_userinfo(query: str, user: str) -> None:
    """A URL as shown in events and pages keeps no query and no user info."""
    shown = public_url(f"https://{user.replace('/', '')}@example.com/p?{query}")
    assert "?" not in shown
    assert "@" not in shown


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("X-Jobrunner-Signature", "x", "RESERVED_HEADER"),
        ("content-type", "text/plain", "RESERVED_HEADER"),
        ("Host", "internal", "RESERVED_HEADER"),
        ("Bad Name", "x", "INVALID_HEADER_NAME"),
        ("X-Ok", "line\r\nInjected: 1", "INVALID_HEADER_VALUE"),
        ("X-Ok", "Müller", "INVALID_HEADER_VALUE"),
        ("X-Ok", " padded ", "INVALID_HEADER_VALUE"),
        ("X-Ok", "x" * 5000, "TOO_LONG"),
    ],
)
def test_bad_header_is_refused_with_its_reason(name: str, value: str, code: str) -> None:
    """Headers that would forge, smuggle or break a delivery are refused, each with a code."""
    errors = check(WebhookTarget(url="https://example.com/", headers={name: value}))
    assert [e.code for e in errors] == [code]
    assert errors[0].field.startswith("webhook.headers.")


def test_too_many_headers_are_refused() -> None:
    """More than 20 headers: TOO_MANY_HEADERS."""
    headers = {f"X-H{i}": "v" for i in range(21)}
    errors = check(WebhookTarget(url="https://example.com/", headers=headers))
    assert [e.code for e in errors] == ["TOO_MANY_HEADERS"]


TYPE = '[job_types.t]\nargv = ["x"]\n[[job_types.t.webhooks]]\n'


def test_job_type_webhooks_load_from_the_types_file(tmp_path: Path) -> None:
    """A type's webhooks = [{url, headers, secret_env}] are read with the type."""
    path = tmp_path / "types.toml"
    path.write_text(TYPE + 'url = "https://h.example/x"\nsecret_env = "T_SECRET"\n')
    [hook] = load_job_types(path)["t"].webhooks
    assert (hook.url, hook.secret_env) == ("https://h.example/x", "T_SECRET")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('url = "ftp://h/"\n', "webhooks[0].url must start with http"),
        ('url = "https://h/"\nheaders = { "X-Jobrunner-Event" = "x" }\n', "set by jobrunner"),
        ('url = "https://h/"\nsecret_env = "not a name"\n', "secret_env"),
    ],
)
def test_bad_job_type_webhook_stops_at_load(tmp_path: Path, body: str, says: str) -> None:
    """A types file with a bad webhook is refused at start, saying what is wrong."""
    path = tmp_path / "types.toml"
    path.write_text(TYPE + body)
    with pytest.raises(JobTypeConfigError, match=re.escape(says)):
        load_job_types(path)


@settings(max_examples=500, deadline=None)
@given(
    url=st.text(max_size=40).map(lambda host: f"https://{host}/hook") | st.text(max_size=80),
    value=st.text(max_size=40) | st.text(alphabet=" \tx\u00e9", max_size=5),
)
def test_what_the_check_accepts_the_notifier_can_send(url: str, value: str) -> None:
    """A URL and a header value the check lets through can be put on the wire as the notifier
    does (to a checked address, the URL's host in ``Host``): one it could not send (a non-ASCII
    header value, an international host name) raised inside the notifier, which left the job's
    end unacknowledged and tried it again after every ack wait, for ever."""
    if check(WebhookTarget(url=url, headers={"X-Name": value})):
        return
    destination = Destination.of(url)
    request = httpx.Request(
        "POST",
        destination.target(ipaddress.ip_address("192.0.2.1")),
        headers={"X-Name": value, "Host": destination.host_header},
    )
    # httpcore writes HTTP/1.1 with h11, which refuses what is not a valid request line or field.
    h11.Request(method="POST", target=request.url.raw_path, headers=request.headers.raw)


@pytest.mark.parametrize(
    ("url", "host_header"),
    [
        ("https://bücher.example/x", "xn--bcher-kva.example"),
        ("http://Example.COM:8080/", "example.com:8080"),
        ("https://[2001:db8::1]:8443/", "[2001:db8::1]:8443"),
    ],
)
def test_international_host_name_is_sent_in_its_ascii_form(url: str, host_header: str) -> None:
    """The Host header (and the TLS name) of an international name is its IDNA form."""
    assert not check(WebhookTarget(url=url))
    assert Destination.of(url).host_header == host_header
