"""Loaded by every service of a counted bench run (``bench/natscount``): logs each NATS protocol
op its connections send and receive to ``$JOBRUNNER_BENCH_NATSCOUNT/<pid>.tsv`` (monotonic ns,
direction, connection name, op, subject, reply, size, marker kind) and its command line to
``<pid>.proc``. Nothing happens without the variable."""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

DIRECTORY = os.environ.get("JOBRUNNER_BENCH_NATSCOUNT")
# The KV headers that tell a marker's kind, as the report names it.
MARKER_HEADERS = (b"KV-Operation: DEL", b"KV-Operation: PURGE", b"Nats-Marker-Reason: MaxAge")

Op = tuple[int, str, str, str, str, str, int, str]


class Connection:
    """A connection's name, taken from its CONNECT."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.name = prefix + "?"


class Parser:
    """Splits one direction of a connection's byte stream into protocol ops."""

    def __init__(self, direction: str, connection: Connection) -> None:
        self.buffer = b""
        self.direction = direction
        self.connection = connection

    def feed(self, data: bytes) -> list[Op]:
        self.buffer += data
        now = time.monotonic_ns()
        ops: list[Op] = []
        while (end := self.buffer.find(b"\r\n")) >= 0:
            line = self.buffer[:end]
            parts = line.split()
            op = parts[0].upper() if parts else b""
            if op in (b"PUB", b"HPUB", b"MSG", b"HMSG"):
                size = int(parts[-1])
                if len(self.buffer) < end + 2 + size + 2:
                    break  # the body is still to come
                body = self.buffer[end + 2 : end + 2 + size]
                self.buffer = self.buffer[end + 2 + size + 2 :]
                ops.append(self._message(now, op, parts, size, body))
                continue
            self.buffer = self.buffer[end + 2 :]
            if op == b"CONNECT":
                name = json.loads(line[8:]).get("name") or "?"
                self.connection.name = self.connection.prefix + name
            if op and op != b"INFO":
                subject = parts[1].decode() if op in (b"SUB", b"UNSUB") else ""
                ops.append(
                    (now, self.direction, self.connection.name, op.decode(), subject, "", 0, "")
                )
        return ops

    def _message(self, now: int, op: bytes, parts: Sequence[bytes], size: int, body: bytes) -> Op:
        # PUB <subject> [reply] <size>, HPUB <subject> [reply] <hdr> <size>, MSG <subject> <sid>
        # [reply] <size>, HMSG <subject> <sid> [reply] <hdr> <size>.
        counts = {b"PUB": 4, b"HPUB": 5, b"MSG": 5, b"HMSG": 6}
        reply_at = 2 if op in (b"PUB", b"HPUB") else 3
        reply = parts[reply_at].decode() if len(parts) == counts[op] else ""
        kind = ""
        if body.startswith(b"NATS/1.0 "):  # a status: heartbeat, flow control, 408, 404
            kind = body.split(b"\r\n", 1)[0].decode("latin1")
        else:
            kind = next((h.split(b": ")[1].decode() for h in MARKER_HEADERS if h in body), "")
        subject = parts[1].decode()
        return (now, self.direction, self.connection.name, op.decode(), subject, reply, size, kind)


class Log:
    """Ops kept in memory, written out by a thread every 0.3 s (never on the event loop)."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, f"{os.getpid()}.tsv")
        self.lines: list[str] = []
        self.lock = threading.Lock()
        with open(os.path.join(directory, f"{os.getpid()}.proc"), "w") as proc:
            proc.write(" ".join(sys.argv))
        threading.Thread(target=self._write_every, daemon=True).start()

    def add(self, ops: list[Op]) -> None:
        lines = ["\t".join(map(str, op)) + "\n" for op in ops]
        with self.lock:
            self.lines.extend(lines)

    def _write_every(self) -> None:
        while True:
            time.sleep(0.3)
            with self.lock:
                lines, self.lines = self.lines, []
            if lines:
                with open(self.path, "a") as out:
                    out.writelines(lines)


def _parsers(owner: Any, prefix: str) -> tuple[Parser, Parser]:
    parsers: tuple[Parser, Parser] | None = owner.__dict__.get("_natscount")
    if parsers is None:
        connection = Connection(prefix)
        parsers = (Parser("out", connection), Parser("in", connection))
        owner.__dict__["_natscount"] = parsers
    return parsers


def _socket_op(owner: Any, direction: str, size: int) -> Op:
    name = _parsers(owner, "")[0].connection.name
    return (
        time.monotonic_ns(),
        direction,
        name,
        "WRITE" if direction == "out" else "READ",
        "",
        "",
        size,
        "",
    )


def patch_nats_py(log: Log) -> None:
    """Every nats-py connection: what its transport writes and reads."""
    from nats.aio import transport

    tcp = transport.TcpTransport
    write, writelines, read = tcp.write, tcp.writelines, tcp.read

    def counted_write(self: Any, payload: bytes) -> None:
        log.add(
            [*_parsers(self, "")[0].feed(bytes(payload)), _socket_op(self, "out", len(payload))]
        )
        write(self, payload)

    def counted_writelines(self: Any, payload: list[bytes]) -> None:
        data = b"".join(payload)
        log.add([*_parsers(self, "")[0].feed(data), _socket_op(self, "out", len(data))])
        writelines(self, payload)

    async def counted_read(self: Any, buffer_size: int) -> bytes:
        data: bytes = await read(self, buffer_size)
        log.add([*_parsers(self, "")[1].feed(data), _socket_op(self, "in", len(data))])
        return data

    tcp.write, tcp.writelines, tcp.read = counted_write, counted_writelines, counted_read  # type: ignore[method-assign]


def patch_stream_reader(module: ModuleType, log: Log) -> None:
    """The project's raw stream reader (projector, the API's feeds): its own socket."""
    reader = module.StreamReader
    parse, send = reader._parse, reader._send

    def counted_parse(self: Any, chunk: bytes) -> Any:
        log.add([*_parsers(self, "sr:")[1].feed(bytes(chunk)), _socket_op(self, "in", len(chunk))])
        return parse(self, chunk)

    def counted_send(self: Any, data: bytes) -> None:
        log.add([*_parsers(self, "sr:")[0].feed(bytes(data)), _socket_op(self, "out", len(data))])
        send(self, data)

    reader._parse, reader._send = counted_parse, counted_send


class PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches ``jobrunner.common.streamreader`` as it is imported."""

    NAME = "jobrunner.common.streamreader"

    def __init__(self, log: Log) -> None:
        self.log = log

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.NAME:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            patch_stream_reader(module, self.log)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if DIRECTORY:
    _log = Log(DIRECTORY)
    patch_nats_py(_log)
    sys.meta_path.insert(0, PatchOnImport(_log))
