"""How every part reaches NATS: one set of connection options, built from the settings once, for
nats-py and for the hand-written stream reader alike, so neither connects in a way the other
cannot."""

from __future__ import annotations

import base64
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jobrunner.common.settings import Settings, SettingsError

SCHEMES = frozenset({"nats", "tls"})


def server_urls(nats_url: str) -> list[str]:
    """The servers of ``nats_url``: a cluster is named by a comma-separated list of their URLs."""
    return [url.strip() for url in nats_url.split(",") if url.strip()]


def checked_servers(nats_url: str) -> list[str]:
    """The servers of ``nats_url``, or ``SettingsError`` saying why no part can connect to it."""
    servers = server_urls(nats_url)
    if not servers:
        raise SettingsError("nats_url names no server")
    for server in servers:
        url = urlsplit(server if "://" in server else f"nats://{server}")
        try:
            url.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError:
            raise SettingsError(f"nats_url: {url.hostname}: the port is not a number") from None
        scheme = url.scheme
        if scheme not in SCHEMES:
            # nats-py would take ws:// and wss://; the projector's stream reader speaks the
            # protocol over TCP only, so refusing here beats a projector that cannot start.
            raise SettingsError(
                f"nats_url: {scheme}:// is not supported (use nats:// or tls://): "
                f"{urlsplit(server).hostname or server}"
            )
    return servers


@dataclass(frozen=True)
class NatsConnection:
    """The servers to try in order, the deadline of each connect step, and TLS.

    ``tls`` is ``None`` when no TLS setting is given: a ``tls://`` URL or a server that requires
    TLS is then verified against the system's certificate authorities (as nats-py does).
    """

    servers: list[str]
    connect_timeout: float
    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsConnection:
        """The options, or ``SettingsError`` naming the setting that cannot be honoured."""
        return cls(
            servers=checked_servers(settings.nats_url),
            connect_timeout=settings.nats_connect_timeout_seconds,
            tls=tls_context(settings),
            tls_hostname=settings.nats_tls_hostname or None,
            nkey_seed_file=checked_nkey_seed_file(settings.nats_nkey_seed_file),
            creds_file=checked_creds_file(settings.nats_creds_file),
        )

    def nats_py_options(self) -> dict[str, Any]:
        """The same options as keyword arguments of nats-py's ``connect()``."""
        options: dict[str, Any] = {
            "servers": self.servers,
            "connect_timeout": self.connect_timeout,
        }
        if self.tls is not None:
            options["tls"] = self.tls
        if self.tls_hostname:
            options["tls_hostname"] = self.tls_hostname
        if self.nkey_seed_file:
            options["nkeys_seed"] = self.nkey_seed_file
        if self.creds_file:
            options["user_credentials"] = self.creds_file
        return options

    @property
    def signs(self) -> bool:
        """Whether CONNECT must carry a signature of the server's nonce (NKey or creds)."""
        return bool(self.nkey_seed_file or self.creds_file)

    def signed_identity(self, nonce: str) -> dict[str, str]:
        """The CONNECT fields nats-py sends for the same settings: the public NKey (or the
        user JWT of the creds file) and the signature of ``nonce`` in base64, the seed read
        from its file for this one use."""
        import nkeys  # optional: checked at start

        fields: dict[str, str] = {}
        if self.creds_file:
            jwt, seed = read_creds(Path(self.creds_file))
            fields["jwt"] = jwt
        else:
            assert self.nkey_seed_file is not None
            seed = bytearray(Path(self.nkey_seed_file).read_bytes().strip())
        key_pair = nkeys.from_seed(seed)
        try:
            if not self.creds_file:
                fields["nkey"] = key_pair.public_key.decode()
            fields["sig"] = base64.b64encode(key_pair.sign(nonce.encode())).decode()
        finally:
            key_pair.wipe()
        return fields


# A creds file: the user JWT, then the seed, each between dashed lines (as nats.go reads it).
_CREDS_BLOCK = re.compile(rb"\s*(?:-{3,}[^\n]*-{3,}\r?\n)([\w\-.=]+)(?:\r?\n-{3,}[^\n]*-{3,}\r?\n)")


def read_creds(path: Path) -> tuple[str, bytearray]:
    """The user JWT and the seed in a creds file, or ValueError."""
    blocks = _CREDS_BLOCK.findall(path.read_bytes())
    if len(blocks) < 2:
        raise ValueError("it holds no user JWT and seed")
    return blocks[0].decode(), bytearray(blocks[1])


def _nkeys_module(setting: str) -> Any:
    try:
        import nkeys
    except ImportError:
        raise SettingsError(
            f"{setting} needs the nkeys package: pip install 'jobrunner[nkeys]'"
        ) from None
    return nkeys


def checked_nkey_seed_file(path: str) -> str | None:
    """``path`` if it holds a usable NKey seed and the nkeys package is there, else
    ``SettingsError``."""
    if not path:
        return None
    nkeys = _nkeys_module("nats_nkey_seed_file")
    try:
        seed = bytearray(Path(path).read_bytes().strip())
    except OSError as exc:
        raise SettingsError(f"nats_nkey_seed_file: {path} cannot be read: {exc}") from None
    try:
        nkeys.from_seed(seed).wipe()
    except Exception:  # nkeys raises its own errors and binascii's for a malformed seed
        raise SettingsError(f"nats_nkey_seed_file: {path} holds no NKey seed") from None
    return path


def checked_creds_file(path: str) -> str | None:
    """``path`` if it is a creds file with a user JWT and a usable seed, else ``SettingsError``."""
    if not path:
        return None
    nkeys = _nkeys_module("nats_creds_file")
    try:
        _, seed = read_creds(Path(path))
        nkeys.from_seed(seed).wipe()
    except OSError as exc:
        raise SettingsError(f"nats_creds_file: {path} cannot be read: {exc}") from None
    except Exception:  # as above
        raise SettingsError(
            f"nats_creds_file: {path} is not a creds file (a user JWT and its NKey seed)"
        ) from None
    return path


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context the TLS settings describe (``None`` when none is set)."""
    ca, cert = settings.nats_tls_ca_file, settings.nats_tls_cert_file
    key = settings.nats_tls_key_file
    if not (ca or cert or key):
        return None
    if key and not cert:
        raise SettingsError("nats_tls_key_file is set without nats_tls_cert_file")
    for name, path in (
        ("nats_tls_ca_file", ca),
        ("nats_tls_cert_file", cert),
        ("nats_tls_key_file", key),
    ):
        if path and not Path(path).is_file():
            raise SettingsError(f"{name}: {path} is not a readable file")
    try:
        context = ssl.create_default_context(cafile=ca or None)
    except ssl.SSLError as exc:
        raise SettingsError(f"nats_tls_ca_file: {ca} holds no usable certificate: {exc}") from None
    if cert:
        try:
            context.load_cert_chain(cert, key or None)
        except ssl.SSLError as exc:
            raise SettingsError(
                f"nats_tls_cert_file / nats_tls_key_file: {cert} and {key or cert} are not a "
                f"certificate and its private key: {exc}"
            ) from None
    return context
