"""Real nats-servers configured as a deployment would be: TLS (and client-certificate
verification), its certificates made by openssl when the test starts; NKey users."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jobrunner.embedded.nats import nats_server_binary
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import ServerProcess, free_port


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing of this server's


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(root: Path) -> TlsFiles:
    def ca(name: str) -> tuple[Path, Path]:
        key, cert = root / f"{name}.key", root / f"{name}.pem"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return cert, key

    def leaf(name: str, signer: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
        key, csr, cert = root / f"{name}.key", root / f"{name}.csr", root / f"{name}.pem"
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        )  # fmt: skip
        ext = root / f"{name}.ext"
        ext.write_text(extensions)
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(signer[0]), "-CAkey", str(signer[1]),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext),
        )  # fmt: skip
        return cert, key

    authority = ca("test-ca")
    other, _ = ca("other-ca")
    server = leaf(
        "server",
        authority,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    client = leaf("client", authority, "extendedKeyUsage=clientAuth\n")
    return TlsFiles(authority[0], server[0], server[1], client[0], client[1], other)


class TlsNats(ServerProcess):
    def __init__(self, root: Path, files: TlsFiles, verify_clients: bool) -> None:
        self.port = free_port()
        config = root / "tls.conf"
        config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            'server_name: "jobrunner-tls"\n'
            f'jetstream {{ store_dir: "{root / "store"}" }}\n'
            "tls {\n"
            f'  cert_file: "{files.server_cert}"\n  key_file: "{files.server_key}"\n'
            f'  ca_file: "{files.ca}"\n  verify: {"true" if verify_clients else "false"}\n'
            "  timeout: 5\n"
            "}\n"
        )
        super().__init__(
            "nats-server-tls",
            # --port wins over the file's: a port taken meanwhile is replaced on the command line.
            [nats_server_binary(), "--config", str(config), "--port", str(self.port)],
            log_file=root / "nats-server.log",
            ready_text="Server is ready",
            port_flag="--port",
        )


@contextmanager
def tls_nats(verify_clients: bool = True) -> Iterator[tuple[TlsNats, TlsFiles]]:
    with scratch_dir("jobrunner-test-tls-nats-") as root:
        files = make_certificates(root)
        server = TlsNats(root, files, verify_clients)
        server.start()
        try:
            yield server, files
        finally:
            server.stop()


class ConfiguredNats(ServerProcess):
    """A nats-server with JetStream and ``config`` added to its configuration file."""

    def __init__(self, root: Path, config: str) -> None:
        self.port = free_port()
        path = root / "nats.conf"
        path.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            'server_name: "jobrunner-configured"\n'
            f'jetstream {{ store_dir: "{root / "store"}" }}\n' + config
        )
        super().__init__(
            "nats-server-configured",
            # --port wins over the file's: a port taken meanwhile is replaced on the command line.
            [nats_server_binary(), "--config", str(path), "--port", str(self.port)],
            log_file=root / "nats-server.log",
            ready_text="Server is ready",
            port_flag="--port",
        )


@contextmanager
def nkey_nats() -> Iterator[tuple[ConfiguredNats, Path, Path]]:
    """A server whose one user is an NKey; yields it, that user's seed file and another seed."""
    import os

    import nkeys  # type: ignore[import-untyped]

    with scratch_dir("jobrunner-test-nkey-nats-") as root:
        seeds = []
        for name in ("user", "stranger"):
            seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
            path = root / f"{name}.nk"
            path.write_bytes(seed)
            path.chmod(0o600)
            seeds.append((path, nkeys.from_seed(bytearray(seed)).public_key.decode()))
        (user_seed, user_public), (stranger_seed, _) = seeds
        server = ConfiguredNats(
            root, f'authorization {{ users = [ {{ nkey: "{user_public}" }} ] }}\n'
        )
        server.start()
        try:
            yield server, user_seed, stranger_seed
        finally:
            server.stop()


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: object, subject: str, nats: dict[str, object]) -> str:
    """A NATS JWT (v2) signed by ``issuer`` (an nkeys key pair), as nsc would write it."""
    import json
    import time

    header = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {
        "jti": _b64url(os.urandom(16)),
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),  # type: ignore[attr-defined]
        "name": subject[:8],
        "sub": subject,
        "nats": nats,
    }
    payload = _b64url(json.dumps(claims).encode())
    signature = issuer.sign(f"{header}.{payload}".encode())  # type: ignore[attr-defined]
    return f"{header}.{payload}.{_b64url(signature)}"


@contextmanager
def operator_nats() -> Iterator[tuple[ConfiguredNats, Path, Path]]:
    """A server in operator mode (JWT accounts, as NGS or an nsc-managed deployment): yields it,
    a creds file of a user of its account, and a creds file of a user of an unknown account."""
    import nkeys  # type: ignore[import-untyped]

    def key(prefix: int) -> object:
        return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))

    def creds(root: Path, name: str, account: object) -> Path:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        user = nkeys.from_seed(bytearray(seed))
        jwt = _jwt(
            account,
            user.public_key.decode(),
            {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user",
             "version": 2},
        )  # fmt: skip
        path = root / f"{name}.creds"
        path.write_text(
            f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n"
        )
        path.chmod(0o600)
        return path

    operator = key(nkeys.PREFIX_BYTE_OPERATOR)
    account, stranger = key(nkeys.PREFIX_BYTE_ACCOUNT), key(nkeys.PREFIX_BYTE_ACCOUNT)
    unlimited = {
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
        "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1,
        "consumer": -1,
    }  # fmt: skip
    operator_jwt = _jwt(
        operator,
        operator.public_key.decode(),
        {"type": "operator", "version": 2},  # type: ignore[attr-defined]
    )
    account_public = account.public_key.decode()  # type: ignore[attr-defined]
    account_jwt = _jwt(
        operator, account_public, {"limits": unlimited, "type": "account", "version": 2}
    )
    system = key(nkeys.PREFIX_BYTE_ACCOUNT)  # JetStream needs the server's system account
    system_public = system.public_key.decode()  # type: ignore[attr-defined]
    system_jwt = _jwt(operator, system_public, {"type": "account", "version": 2})
    with scratch_dir("jobrunner-test-operator-nats-") as root:
        server = ConfiguredNats(
            root,
            f'operator: "{operator_jwt}"\nsystem_account: "{system_public}"\n'
            "resolver: MEMORY\n"
            f'resolver_preload: {{ {account_public}: "{account_jwt}", '
            f'{system_public}: "{system_jwt}" }}\n',
        )
        server.start()
        try:
            yield server, creds(root, "user", account), creds(root, "stranger", stranger)
        finally:
            server.stop()
