"""A Postgres reached across a network that can be cut (tests only, needs root: network
namespaces and ``tc``). A relay in a network namespace of its own forwards a port to the
Postgres on this host over a veth pair; ``cut`` drops every packet both ways (no reset, no
error: a host gone silent), ``heal`` lets them through again, ``replace_relay`` kills the relay
(its far ends never learn while cut) and starts another on the same address, as a server
coming back on a new host behind the same address.

Each link takes a slot (its namespace ``jrt<slot>``, veth ``jrt<slot>h``, subnet ``10.231.<slot>``)
by holding an advisory lock on a file of that slot: unique across pytest-xdist workers, and freed
by the kernel when a worker dies, even SIGKILLed. What a dead worker left in a slot (namespace,
veth, blackhole route) is removed by the next one to take it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

RELAY = """
import asyncio, sys
listen, port, target, target_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
async def serve(reader, writer):
    up_reader, up_writer = await asyncio.open_connection(target, target_port)
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
async def main():
    server = await asyncio.start_server(serve, listen, port)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


SLOTS_DIR = "/tmp/jobrunner-test-netns"
SLOTS = 250


def unavailable() -> str | None:
    """Why links cannot be made here (tests skip with it), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"`ip netns` is unavailable: {exc}"
    return None


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass
class CuttableLink:
    namespace: str
    host_side: str  # the veth end on this host
    host_address: str  # where the relay reaches Postgres
    relay_address: str  # where clients reach the relay
    relay_port: int
    postgres_port: int
    relay: subprocess.Popen[bytes] | None = None

    def start_relay(self) -> None:
        self.relay = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", RELAY,
             self.relay_address, str(self.relay_port), self.host_address,
             str(self.postgres_port)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.relay.stdout is not None
        assert self.relay.stdout.readline().strip() == b"ready"

    def stop_relay(self) -> None:
        if self.relay is not None:
            self.relay.kill()
            self.relay.wait()
            self.relay = None

    def replace_relay(self) -> None:
        self.stop_relay()
        self.start_relay()

    def cut(self) -> None:
        """Packets between the two ends go nowhere (blackhole routes on both sides: this
        machine's kernel has no netem nor packet filter)."""
        _run("ip", "route", "add", "blackhole", f"{self.relay_address}/32")
        _run(*self._inside, "ip", "route", "add", "blackhole", f"{self.host_address}/32")

    def heal(self) -> None:
        _run("ip", "route", "del", "blackhole", f"{self.relay_address}/32")
        _run(*self._inside, "ip", "route", "del", "blackhole", f"{self.host_address}/32")

    @property
    def _inside(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace)


def _setup(link: CuttableLink) -> None:
    _run("ip", "netns", "add", link.namespace)
    _run("ip", "link", "add", link.host_side, "type", "veth", "peer", "name", "peer0",
         "netns", link.namespace)  # fmt: skip
    _run("ip", "addr", "add", f"{link.host_address}/30", "dev", link.host_side)
    _run("ip", "link", "set", link.host_side, "up")
    inside = ("ip", "netns", "exec", link.namespace)
    _run(*inside, "ip", "addr", "add", f"{link.relay_address}/30", "dev", "peer0")
    _run(*inside, "ip", "link", "set", "peer0", "up")
    _run(*inside, "ip", "link", "set", "lo", "up")
    link.start_relay()


def _teardown(link: CuttableLink) -> None:
    link.stop_relay()
    # A relay left by a worker that died holds the namespace: kill what runs in it.
    pids = subprocess.run(["ip", "netns", "pids", link.namespace], capture_output=True).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(
        ["ip", "route", "del", "blackhole", f"{link.relay_address}/32"], capture_output=True
    )
    subprocess.run(["ip", "link", "del", link.host_side], capture_output=True)
    subprocess.run(["ip", "netns", "del", link.namespace], capture_output=True)


def vanish_and_return(link: CuttableLink) -> None:
    """The relay's host goes silently (cut first, so not even a FIN leaves it; its sockets die
    with its namespace), and a new one answers at the same address, knowing nothing of the old
    connections."""
    link.cut()
    _teardown(link)  # the host side's blackhole goes too: the new far end is reachable
    _setup(link)


def _in_slot(slot: int, relay_port: int, postgres_port: int) -> CuttableLink:
    subnet = f"10.231.{slot}"
    return CuttableLink(
        f"jrt{slot}", f"jrt{slot}h", f"{subnet}.1", f"{subnet}.2", relay_port, postgres_port
    )


def _clear_abandoned_slots(relay_port: int, postgres_port: int) -> None:
    """Remove what workers that died (their slot's lock free again) left in any slot."""
    for name in os.listdir(SLOTS_DIR):
        slot = int(name.removesuffix(".lock"))
        fd = os.open(f"{SLOTS_DIR}/{name}", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its worker is alive
        else:
            _teardown(_in_slot(slot, relay_port, postgres_port))
        finally:
            os.close(fd)


def _exists(error: subprocess.CalledProcessError) -> bool:
    return b"File exists" in (error.stderr or b"")


@contextmanager
def cuttable_link(postgres_port: int, relay_port: int) -> Iterator[CuttableLink]:
    """The namespace, the veth pair and the relay, in the first free slot; all removed
    afterwards."""
    os.makedirs(SLOTS_DIR, exist_ok=True)
    _clear_abandoned_slots(relay_port, postgres_port)
    for slot in range(SLOTS):
        fd = os.open(f"{SLOTS_DIR}/{slot}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                continue  # another worker's slot
            raise
        try:
            link = _in_slot(slot, relay_port, postgres_port)
            _teardown(link)  # what a worker that died in this slot left behind
            try:
                _setup(link)
            except subprocess.CalledProcessError as exc:
                _teardown(link)
                if _exists(exc):
                    continue  # the name or subnet is taken by something else: the next slot
                raise
            try:
                yield link
            finally:
                _teardown(link)
            return
        finally:
            os.close(fd)  # frees the slot
    raise RuntimeError(f"no free network slot in {SLOTS_DIR} ({SLOTS} taken)")
