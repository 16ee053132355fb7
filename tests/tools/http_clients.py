"""The tests' HTTP clients, sharing one TLS context.

httpx builds a TLS context for every client it makes, loading the CA bundle again: about 35 ms
of CPU a client, and the suite makes thousands (a few in each test, one per poll while an API
process starts). One context, built as httpx builds its default one, serves them all: the same
verification, paid for once per process.

The context is built once, when this module is imported, with httpx's defaults: SSL_CERT_FILE
or SSL_CERT_DIR set after that are ignored, and so would be a client's own ``cert=`` or
``trust_env=`` as far as TLS goes (httpx reads them only when it builds a context).
``client()`` refuses both rather than ignore them."""

from __future__ import annotations

from typing import Any

import httpx

TLS = httpx.create_ssl_context()


def client(**kwargs: Any) -> httpx.AsyncClient:
    """``httpx.AsyncClient(**kwargs)`` on the shared TLS context."""
    refused = {"cert", "trust_env"} & kwargs.keys()
    if refused:
        raise TypeError(f"the shared TLS context cannot honour {sorted(refused)}: use httpx")
    kwargs.setdefault("verify", TLS)
    return httpx.AsyncClient(**kwargs)
