"""Whether a process holds the far end of our connection (``common/farend.py``), with real
sockets and real processes: the holder of the server's end passes, any other process does not
(a pooler's backend or a sibling backend holds another connection; a stranger, none)."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from jobrunner.common.farend import (
    NLMSG_ERROR,
    NLMSGHDR,
    RTATTR,
    SEQUENCE,
    SOCK_DIAG_BY_FAMILY,
    U32,
    UNIX_DIAG_MSG,
    UNIX_DIAG_PEER,
    NoPeer,
    as_ipv6,
    endpoint,
    inode_in_table,
    peer_in_reply,
    proc_field,
    unix_peer_inode,
    unix_peer_of,
    why_not_far_end,
)

NOT_HELD = "the process does not hold the server's end of our connection"
NOT_HERE = "the server's end of the connection is not on this host"
UNREADABLE = "the process's descriptors cannot be read"
NO_PEER = "the connection has no peer (closed)"
UNIX_DIAG_NAME = 0  # linux/unix_diag.h


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


def test_proc_net_tcp_fields_are_printed_in_this_host_s_byte_order() -> None:
    little = sys.byteorder == "little"
    loopback = "0100007F" if little else "7F000001"
    assert proc_field(*endpoint(("127.0.0.1", 8080))) == f"{loopback}:1F90"
    one = "01000000" if little else "00000001"
    assert proc_field(*endpoint(("::1", 22, 0, 0))) == f"{'0' * 24}{one}:0016"
    mapped = "FFFF0000" if little else "0000FFFF"  # ::ffff:0:0, as /proc/net/tcp6 prints it
    ip, port = endpoint(("::ffff:127.0.0.1", 5432, 0, 0))
    assert proc_field(as_ipv6(ip), port) == f"{'0' * 16}{mapped}{loopback}:1538"


def test_a_table_row_that_does_not_read_as_one_is_skipped() -> None:
    """A row cut short or with a field out of shape is passed over, not raised."""
    local, remote = "0100007F:1538", "0100007F:9C40"
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when ... inode\n"
    good = f"   3: {local} {remote} 01 00000000:00000000 00:00000000 00000000 1000 0 4242 1 0\n"
    table = (
        header
        + f"   0: {local} {remote} 01 00000000:00000000\n"  # cut short
        + f"   1: {local} {remote} 01 00000000:00000000 00:00000000 00000000 1000 0 x1 1\n"
        + f"   2: {local} {remote} 01 00000000:00000000 00:00000000 00000000 1000 0 0 1\n"
        + good
    )
    assert inode_in_table(table.encode(), local, remote) == 4242
    assert inode_in_table(table[: -len(good)].encode(), local, remote) is None
    assert inode_in_table(f"   0: {local} {remote} 01".encode(), local, remote) is None


@contextmanager
def unix_server() -> Iterator[tuple[socket.socket, str]]:
    """A Unix socket this process listens on, as a postmaster does; it and its path."""
    with tempfile.TemporaryDirectory(prefix="farend-") as directory:
        path = os.path.join(directory, "server")
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            listener.listen()
            yield listener, path


def test_a_unix_connection_leads_only_to_the_holder_of_its_server_end() -> None:
    """The listener's children pass only holding our connection's accepted socket: a sibling
    backend (another connection's) or a child holding none (the checkpointer) does not."""
    with unix_server() as (listener, path), socket.socket(socket.AF_UNIX) as ours:
        ours.connect(path)
        theirs, _ = listener.accept()
        with socket.socket(socket.AF_UNIX) as other:
            other.connect(path)
            others, _ = listener.accept()
            with others:
                with theirs, holding(theirs) as backend:
                    theirs.close()  # the backend alone holds it now, as after a fork
                    assert why_not_far_end(ours, backend) is None
                    assert why_not_far_end(ours, os.getpid()) == NOT_HELD
                    with holding(others) as sibling:
                        assert why_not_far_end(ours, sibling) == NOT_HELD
                        assert why_not_far_end(other, sibling) is None
                    with holding() as checkpointer:
                        assert why_not_far_end(ours, checkpointer) == NOT_HELD
                    assert why_not_far_end(ours, 0) == UNREADABLE  # no such process here
                # Every holder gone: its end is released, held by no one.
                assert why_not_far_end(ours, os.getpid()) == NO_PEER


def test_a_unix_connection_to_a_pooler_leads_to_the_pooler_not_to_a_backend() -> None:
    """Another process listens and accepts, as pgbouncer does: it holds our connection's server
    end, a process that is not it (a Postgres backend serving it) does not."""
    with tempfile.TemporaryDirectory(prefix="farend-") as directory:
        path = os.path.join(directory, "server")
        pooler = subprocess.Popen(
            [sys.executable, "-c", POOLER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert pooler.stdin is not None
        assert pooler.stdout is not None
        try:
            assert pooler.stdout.readline() == b"listening\n"
            with socket.socket(socket.AF_UNIX) as ours:
                ours.connect(path)
                assert pooler.stdout.readline() == b"accepted\n"
                with holding() as its_backend:
                    assert why_not_far_end(ours, its_backend) == NOT_HELD
                assert why_not_far_end(ours, pooler.pid) is None
        finally:
            pooler.stdin.close()
            pooler.wait()


def test_sock_diag_tells_a_unix_socket_s_peer() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert unix_peer_inode(left) == os.fstat(right.fileno()).st_ino
        assert unix_peer_inode(right) == os.fstat(left.fileno()).st_ino
        gone = os.fstat(right.fileno()).st_ino
    with pytest.raises(NoPeer, match="no such Unix socket"):
        unix_peer_of(gone)
    with pytest.raises(NoPeer, match="closed"):
        unix_peer_inode(left)


def reply(
    *, kind: int = SOCK_DIAG_BY_FAMILY, about: int = 41, peer: int = 42, sequence: int = SEQUENCE
) -> bytes:
    """sock_diag's answer about Unix socket ``about`` whose peer is ``peer``, as the kernel
    lays it out."""
    body = UNIX_DIAG_MSG.pack(socket.AF_UNIX, socket.SOCK_STREAM, 1, 0, about, 0, 0)
    name = b"\0pg"  # an abstract name first: an attribute of 7 bytes, padded to 8
    body += RTATTR.pack(RTATTR.size + len(name), UNIX_DIAG_NAME) + name + b"\0"
    body += RTATTR.pack(RTATTR.size + 4, UNIX_DIAG_PEER) + U32.pack(peer)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, 0, sequence, 0) + body


def test_sock_diag_s_answer_is_read_with_care() -> None:
    """An error, an answer about another socket, or one cut short anywhere is a reason."""
    assert peer_in_reply(reply(), 41) == 42
    for cut in range(len(reply())):
        with pytest.raises(NoPeer):
            peer_in_reply(reply()[:cut], 41)
        # Cut short with a header that agrees: the attributes end early.
        whole = reply()
        resized = NLMSGHDR.pack(cut, *NLMSGHDR.unpack_from(whole)[1:]) + whole[NLMSGHDR.size :]
        with pytest.raises(NoPeer):
            peer_in_reply(resized[: max(cut, NLMSGHDR.size)], 41)
    with pytest.raises(NoPeer, match="another socket"):
        peer_in_reply(reply(about=7), 41)
    with pytest.raises(NoPeer, match="closed"):
        peer_in_reply(reply(peer=0), 41)
    with pytest.raises(NoPeer, match="message type"):
        peer_in_reply(reply(kind=3), 41)
    error = NLMSGHDR.pack(NLMSGHDR.size + 4 + NLMSGHDR.size, NLMSG_ERROR, 0, SEQUENCE, 0)
    error += struct.pack("=i", -errno.EPERM) + NLMSGHDR.pack(0, 0, 0, 0, 0)
    with pytest.raises(NoPeer, match="refused"):
        peer_in_reply(error, 41)
    with pytest.raises(NoPeer, match="cut short"):
        peer_in_reply(error[: NLMSGHDR.size + 2], 41)
    with pytest.raises(NoPeer, match="another request"):
        peer_in_reply(reply(sequence=SEQUENCE + 1), 41)
    not_an_errno = error[: NLMSGHDR.size] + struct.pack("=i", -(2**31)) + error[NLMSGHDR.size + 4 :]
    with pytest.raises(NoPeer, match="refused with code"):
        peer_in_reply(not_an_errno, 41)


POOLER = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
print("listening", flush=True)
client, _ = server.accept()
print("accepted", flush=True)
sys.stdin.read()
"""
