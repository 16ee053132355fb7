"""Whether a process holds the far end of our connection (``common/farend.py``), with real
sockets and real processes: the holder of the server's end passes, any other process does not
(a pooler's backend holds another connection; a stranger, none)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from jobrunner.common.farend import endpoint, proc_endpoint, why_not_far_end

NOT_HELD = "the process does not hold the server's end of our connection"
NOT_HERE = "the server's end of the connection is not on this host"
NOT_A_CHILD = "not a child of the listening server (a pooler, or another pid namespace)"


@contextmanager
def holding(*sockets: socket.socket) -> Iterator[int]:
    """A process of its own holding ``sockets`` (none: a stranger); its pid."""
    child = subprocess.Popen(["sleep", "600"], pass_fds=[s.fileno() for s in sockets])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def listener_for(host: str) -> socket.socket:
    try:
        if host == "::":  # dual-stack: an IPv4 client's server end is an IPv6 socket
            if not socket.has_dualstack_ipv6():
                pytest.skip("no dual-stack IPv6 here")
            return socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, 0), family=family)
    except OSError as exc:
        pytest.skip(f"cannot listen on {host}: {exc}")


@pytest.mark.parametrize(
    ("listen", "connect"), [("127.0.0.1", "127.0.0.1"), ("::", "127.0.0.1"), ("::1", "::1")]
)
def test_a_tcp_connection_leads_only_to_the_holder_of_its_server_end(
    listen: str, connect: str
) -> None:
    with listener_for(listen) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection((connect, port)) as ours:
            theirs, _ = listener.accept()
            with theirs, socket.create_connection((connect, port)) as other:
                others, _ = listener.accept()
                with others:
                    assert why_not_far_end(ours, os.getpid()) is None
                    with holding(theirs) as backend:
                        assert why_not_far_end(ours, backend) is None
                    with holding(others) as poolers_backend:
                        assert why_not_far_end(ours, poolers_backend) == NOT_HELD
                        assert why_not_far_end(other, poolers_backend) is None
                    with holding() as stranger:
                        assert why_not_far_end(ours, stranger) == NOT_HELD


def test_a_tcp_connection_whose_server_end_nobody_holds_leads_nowhere() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as ours,
    ):
        theirs, _ = listener.accept()
        theirs.close()  # its end is the kernel's now (closing), held by no process
        assert why_not_far_end(ours, os.getpid()) == NOT_HERE


def test_proc_net_tcp_addresses_are_read_in_this_host_s_byte_order() -> None:
    little = sys.byteorder == "little"
    loopback = "0100007F" if little else "7F000001"
    assert proc_endpoint(f"{loopback}:1F90") == endpoint(("127.0.0.1", 8080))
    one = "01000000" if little else "00000001"
    assert proc_endpoint(f"{'0' * 24}{one}:0016") == endpoint(("::1", 22, 0, 0))
    mapped = "FFFF0000" if little else "0000FFFF"  # ::ffff:0:0, as /proc/net/tcp6 prints it
    assert proc_endpoint(f"{'0' * 16}{mapped}{loopback}:1538") == endpoint(("127.0.0.1", 5432))
    assert endpoint(("::ffff:127.0.0.1", 5432, 0, 0)) == endpoint(("127.0.0.1", 5432))


def test_a_unix_connection_leads_only_to_children_of_the_process_that_listens() -> None:
    with tempfile.TemporaryDirectory(prefix="farend-") as directory:
        path = os.path.join(directory, "server")
        # This process listens, as a postmaster does: its children are its backends.
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            listener.listen()
            with socket.socket(socket.AF_UNIX) as ours:
                ours.connect(path)
                with holding() as backend:
                    assert why_not_far_end(ours, backend) is None
                assert why_not_far_end(ours, os.getpid()) == NOT_A_CHILD
        os.unlink(path)
        # Another process listens, as a pooler does: a child of this one is none of its own.
        pooler = subprocess.Popen(
            [sys.executable, "-c", LISTEN, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert pooler.stdin is not None
        assert pooler.stdout is not None
        try:
            assert pooler.stdout.readline() == b"listening\n"
            with socket.socket(socket.AF_UNIX) as ours:
                ours.connect(path)
                with holding() as not_its_backend:
                    assert why_not_far_end(ours, not_its_backend) == NOT_A_CHILD
        finally:
            pooler.stdin.close()
            pooler.wait()


LISTEN = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
print("listening", flush=True)
sys.stdin.read()
"""
