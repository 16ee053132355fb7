"""One attempt to POST a webhook: to an address checked after DNS, never redirected.

httpx makes the request, to the checked IP address itself (``addresses``); the ``Host`` header
and, for https, the TLS server name (SNI, and the name the certificate is verified for) stay the
URL's host. Connections are not kept alive: a pooled connection is keyed by address, and another
webhook's host on the same address must get its own TLS name. Environment proxies are ignored
(``trust_env=False``): a proxy would reach what the address check refused.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from jobrunner.common.looptime import MOST_BOUNDS, LoopTimeout
from jobrunner.services.notifier.addresses import (
    AddressPolicy,
    AddressRefused,
    IPAddress,
    checked_addresses,
)

USER_AGENT = "jobrunner-notifier/1"
# The receiver's answer is not kept; only this much of it is read before the connection closes.
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt came to: a status code, or an error (code and sentence)."""

    status_code: int | None
    error_code: str | None
    error_message: str | None
    duration_ms: float
    retryable: bool

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _classify(status: int) -> tuple[str | None, str | None, bool]:
    """Error code, sentence and whether a later attempt may succeed, for an HTTP status."""
    if 200 <= status < 300:
        return None, None, False
    if 300 <= status < 400:
        return (
            "WEBHOOK_REDIRECT_REFUSED",
            f"The receiver answered {status} (a redirect); webhooks do not follow redirects.",
            False,
        )
    if status in (408, 425, 429) or status >= 500:
        return "WEBHOOK_HTTP_ERROR", f"The receiver answered {status}.", True
    return "WEBHOOK_REJECTED", f"The receiver answered {status}; retrying cannot change it.", False


@dataclass(frozen=True)
class Destination:
    """Where a webhook URL points, in the forms the request needs."""

    scheme: str
    name: str  # as written in the URL: what is resolved and matched against the allow list
    host: str  # its ASCII form (IDNA for an international name): Host header and TLS name
    port: int
    path: str
    query: str

    @classmethod
    def of(cls, url: str) -> Destination:
        """Raises ValueError or httpx.InvalidURL for a URL no request can be made to."""
        parts = urlsplit(url)
        default = 443 if parts.scheme == "https" else 80
        return cls(
            scheme=parts.scheme,
            name=parts.hostname or "",
            host=httpx.URL(url).raw_host.decode("ascii"),
            port=parts.port or default,
            path=parts.path or "/",
            query=parts.query,
        )

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = self.port == (443 if self.scheme == "https" else 80)
        return host if default else f"{host}:{self.port}"

    def target(self, address: IPAddress) -> str:
        """The URL with the checked address in place of the host name."""
        shown = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
        return urlunsplit((self.scheme, f"{shown}:{self.port}", self.path, self.query, ""))


class Sender:
    def __init__(
        self,
        policy: AddressPolicy,
        connect_timeout: float,
        read_timeout: float,
        ca_file: str = "",
    ) -> None:
        self.policy = policy
        self.read_timeout = read_timeout
        # The system's authorities, or the installation's own for receivers on an internal CA.
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        # httpx's own bounds on sending and reading are wall time, each socket read or write
        # on its own: only a backstop (the answer's deadline, _post_to, is the bound).
        backstop = read_timeout * MOST_BOUNDS
        self.client = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(
                connect=connect_timeout, read=backstop, write=backstop, pool=read_timeout
            ),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> AttemptResult:
        started = time.monotonic()

        def result(
            status: int | None, code: str | None, message: str | None, retryable: bool
        ) -> AttemptResult:
            elapsed = round((time.monotonic() - started) * 1000, 3)
            return AttemptResult(status, code, message, elapsed, retryable)

        try:
            destination = Destination.of(url)
        except (ValueError, httpx.InvalidURL) as exc:
            # The API and the job-types file refuse such a URL; an event written by something
            # else may still carry one. Failed for good: no retry could change it.
            return result(None, "WEBHOOK_INVALID", f"The webhook URL cannot be used: {exc}", False)
        try:
            addresses = await checked_addresses(destination.name, destination.port, self.policy)
        except AddressRefused as exc:
            return result(None, exc.code, str(exc), exc.code == "WEBHOOK_DNS_FAILED")
        try:
            # Each checked address in the resolver's order until one takes the connection.
            for n, address in enumerate(addresses):
                try:
                    return await self._post_to(
                        destination.target(address),
                        {**headers, "Host": destination.host_header},
                        destination.host,
                        body,
                        result,
                    )
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    if n == len(addresses) - 1:
                        raise
            raise AssertionError("unreachable: checked_addresses never answers none")
        except (httpx.TimeoutException, TimeoutError) as exc:
            what = (
                "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for an answer"
            )
            return result(
                None, "WEBHOOK_TIMEOUT", f"The receiver did not answer in time ({what}).", True
            )
        except httpx.HTTPError as exc:
            return result(
                None,
                "WEBHOOK_UNREACHABLE",
                f"The receiver could not be reached: {type(exc).__name__}: {exc}"[:500],
                True,
            )

    async def _post_to(
        self,
        target: str,
        headers: dict[str, str],
        host: str,
        body: bytes,
        result: Callable[[int | None, str | None, str | None, bool], AttemptResult],
    ) -> AttemptResult:
        """The POST, its answer due within the read timeout of the connection: one deadline for
        the whole answer, not httpx's per read (a receiver dripping a byte at a time inside it
        held the attempt, and the job's delivery, for ever). Once the status has come it is the
        answer: a body that never ends or breaks off cannot turn a 200 into a retry."""
        answered: AttemptResult | None = None
        # The loop's own time (common.looptime), not wall time: the notifier's loop blocked
        # (a long callback, a suspended process resumed) while the receiver answered is not a
        # receiver that did not answer. The deadline starts mid-request (at the headers' send)
        # and covers the streamed answer.
        try:
            async with LoopTimeout(None) as answer_due:

                async def connected(event: str, info: dict[str, object]) -> None:
                    if event == "http11.send_request_headers.started":
                        answer_due.start(self.read_timeout)

                async with self.client.stream(
                    "POST",
                    target,
                    content=body,
                    # httpx says keep-alive by default; this client never keeps a connection
                    # (see the module docstring), and a receiver told so closes it at once
                    # instead of holding the socket open until the notifier closes it.
                    headers={**headers, "User-Agent": USER_AGENT, "Connection": "close"},
                    extensions={"sni_hostname": host, "trace": connected},
                ) as response:
                    code, message, retryable = _classify(response.status_code)
                    answered = result(response.status_code, code, message, retryable)
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_ANSWER_BYTES:
                            break
        except (TimeoutError, httpx.HTTPError):
            if answered is None:
                raise
        assert answered is not None  # the stream either answered or raised
        return answered
