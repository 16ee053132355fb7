"""The tests' HTTP clients, sharing one TLS context.

httpx builds a TLS context for every client it makes, loading the CA bundle again: about 35 ms
of CPU a client, and the suite makes thousands (a few in each test, one per poll while an API
process starts). One context, built as httpx builds its default one, serves them all: the same
verification, paid for once per process."""

from __future__ import annotations

from typing import Any

import httpx

TLS = httpx.create_ssl_context()


def client(**kwargs: Any) -> httpx.AsyncClient:
    """``httpx.AsyncClient(**kwargs)`` on the shared TLS context."""
    kwargs.setdefault("verify", TLS)
    return httpx.AsyncClient(**kwargs)


def sync_client(**kwargs: Any) -> httpx.Client:
    """``httpx.Client(**kwargs)`` on the shared TLS context."""
    kwargs.setdefault("verify", TLS)
    return httpx.Client(**kwargs)
