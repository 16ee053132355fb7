"""Whether a process on this host holds the far end of one of this process's connections.

A Postgres server's ``pg_backend_pid()`` is only its word: behind a connection pooler it names
the backend that serves the pooler (lent to other clients next), and from another pid namespace
(a server in a container, its socket shared with this host) a number of that namespace, which
here names another process or none. Before acting on such a pid, the connection itself must lead
to it: the process must hold the server's end of our socket among its descriptors, found by:

- TCP: the socket in this network namespace whose local address is our peer address and whose
  remote address is our own (``/proc/net/tcp`` and ``tcp6``).
- Unix socket: our socket's peer, by its inode, which the kernel's sock_diag tells
  (``NETLINK_SOCK_DIAG``, ``UDIAG_SHOW_PEER``).

A pooler's backend holds the pooler's connection, a sibling backend or another child of the
postmaster (the checkpointer) another one or none, a stranger none: all fail. Whatever number a
server in another pid namespace answers, only the process here that holds our connection's
server end passes: that is our backend itself, seen in this namespace.

Reading the whole TCP table of a busy host takes tens of milliseconds: call this off the event
loop.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from pathlib import Path

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[Address, int]

# /proc/net/tcp's connection state of an established socket.
ESTABLISHED = "01"

# sock_diag (linux/netlink.h, linux/sock_diag.h, linux/unix_diag.h).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
UDIAG_SHOW_PEER = 0x4
UNIX_DIAG_PEER = 2
ALL_STATES = 0xFFFFFFFF
NO_COOKIE = 0xFFFFFFFF  # both words: look the socket up by its inode alone
SEQUENCE = 1
DIAG_TIMEOUT_SECONDS = 1.0  # the kernel answers within the send; never wait on it for long
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
UNIX_DIAG_REQ = struct.Struct("=BBHIII2I")  # family, protocol, pad, states, inode, show, cookie
UNIX_DIAG_MSG = struct.Struct("=BBBBI2I")  # family, type, state, pad, inode, cookie
RTATTR = struct.Struct("=HH")  # length, type
U32 = struct.Struct("=I")
U32_MAX = 0xFFFFFFFF
NLMSGERR = struct.Struct("=i")  # a negative errno


class NoPeer(Exception):
    """The kernel did not tell a Unix socket's peer; the message says why."""


def why_not_far_end(sock: socket.socket, pid: int) -> str | None:
    """None when ``pid`` is shown to hold the far end of ``sock``; else why it is not."""
    if sock.family == socket.AF_UNIX:
        try:
            inode = unix_peer_inode(sock)
        except NoPeer as exc:
            return str(exc)
    elif sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            ours, peer = endpoint(sock.getsockname()), endpoint(sock.getpeername())
        except OSError:
            return "the connection is closed"
        found = server_socket_inode(local=peer, remote=ours)
        if found is None:
            # A remote server, a server in another network namespace (a container's port), or
            # a connection closed meanwhile.
            return "the server's end of the connection is not on this host"
        inode = found
    else:
        return "not a TCP or Unix socket"
    try:
        held = holds_socket(pid, inode)
    except OSError:  # gone, not in this pid namespace, or another user's process
        return "the process's descriptors cannot be read"
    return None if held else "the process does not hold the server's end of our connection"


def unix_peer_inode(sock: socket.socket) -> int:
    """The inode of the socket at the other end of the Unix socket ``sock`` (the one the
    server accepted), as sock_diag tells it; NoPeer when it does not."""
    try:
        inode = os.fstat(sock.fileno()).st_ino
    except (OSError, ValueError):  # closed (fileno -1)
        raise NoPeer("the connection is closed") from None
    return unix_peer_of(inode)


def unix_peer_of(inode: int) -> int:
    """The inode of the peer of the Unix socket ``inode``, as sock_diag tells it; NoPeer when
    it does not."""
    if inode > U32_MAX:  # sock_diag numbers sockets in 32 bits
        raise NoPeer("the socket's inode does not fit sock_diag")
    request = UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0, ALL_STATES, inode, UDIAG_SHOW_PEER, NO_COOKIE, NO_COOKIE
    )
    header = NLMSGHDR.pack(
        NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, SEQUENCE, 0
    )
    try:
        diag = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):  # a kernel without sock_diag, or not Linux
        raise NoPeer("the kernel does not tell a Unix socket's peer (no sock_diag)") from None
    with diag:
        diag.settimeout(DIAG_TIMEOUT_SECONDS)
        try:
            diag.send(header + request)
            reply = diag.recv(65536)
        except OSError as exc:  # a timeout too
            raise NoPeer(f"sock_diag did not answer ({exc!r})") from None
    return peer_in_reply(reply, inode)


def peer_in_reply(reply: bytes, inode: int) -> int:
    """The peer's inode in sock_diag's ``reply`` about the Unix socket ``inode``; NoPeer for
    an error, a reply about something else, or one cut short."""
    short = NoPeer("sock_diag's answer is cut short")
    if len(reply) < NLMSGHDR.size:
        raise short
    length, kind, _, sequence, _ = NLMSGHDR.unpack_from(reply)
    if length < NLMSGHDR.size or length > len(reply):
        raise short
    if sequence != SEQUENCE:
        raise NoPeer("sock_diag answered another request")
    if kind == NLMSG_ERROR:
        if length < NLMSGHDR.size + NLMSGERR.size:
            raise short
        error = -NLMSGERR.unpack_from(reply, NLMSGHDR.size)[0]
        if error == errno.ENOENT:  # no such socket (any more), or no unix_diag in the kernel
            raise NoPeer("sock_diag knows no such Unix socket (closed, or no unix_diag)")
        if not 0 < error < 4096:  # not an errno: os.strerror would raise on it
            raise NoPeer(f"sock_diag refused with code {error}")
        raise NoPeer(f"sock_diag refused: {os.strerror(error)}")
    if kind != SOCK_DIAG_BY_FAMILY:
        raise NoPeer(f"sock_diag answered with message type {kind}")
    if length < NLMSGHDR.size + UNIX_DIAG_MSG.size:
        raise short
    family, _, _, _, about, _, _ = UNIX_DIAG_MSG.unpack_from(reply, NLMSGHDR.size)
    if family != socket.AF_UNIX or about != inode:
        raise NoPeer("sock_diag answered about another socket")
    offset = NLMSGHDR.size + UNIX_DIAG_MSG.size
    while offset + RTATTR.size <= length:
        size, kind = RTATTR.unpack_from(reply, offset)
        if size < RTATTR.size or offset + size > length:
            raise short
        if kind == UNIX_DIAG_PEER:
            if size < RTATTR.size + U32.size:
                raise short
            peer: int = U32.unpack_from(reply, offset + RTATTR.size)[0]
            if peer == 0:  # the server's end is released: no process holds it
                break
            return peer
        offset += (size + 3) & ~3  # attributes are 4-byte aligned
    raise NoPeer("the connection has no peer (closed)")


def endpoint(address: tuple[str, int] | tuple[str, int, int, int]) -> Endpoint:
    """A socket address as ``getsockname`` gives it, an IPv4-mapped IPv6 address as IPv4 (a
    dual-stack server's end of an IPv4 connection is an IPv6 socket)."""
    ip = ipaddress.ip_address(address[0].split("%", 1)[0])  # without an IPv6 scope
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, address[1]


def proc_field(ip: Address, port: int) -> str:
    """An address and port as ``/proc/net/tcp{,6}`` prints them (``0100007F:1F90``): the address
    as 32-bit words, each in this host's byte order, then the port."""
    words = struct.unpack(f"={len(ip.packed) // 4}I", ip.packed)
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


def as_ipv6(ip: Address) -> ipaddress.IPv6Address:
    """An IPv4 address as a dual-stack socket has it (``::ffff:a.b.c.d``)."""
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)


def server_socket_inode(local: Endpoint, remote: Endpoint) -> int | None:
    """The inode of the established socket in this network namespace from ``local`` to
    ``remote``; None when there is none. The addresses are printed once the way the tables
    print them and found as bytes: a busy host's tables hold tens of thousands of rows."""
    ipv4 = all(isinstance(ip, ipaddress.IPv4Address) for ip, _ in (local, remote))
    # An IPv4 connection's server end is in tcp, or in tcp6 when a dual-stack socket accepted it.
    tables = (
        (("/proc/net/tcp", False), ("/proc/net/tcp6", True))
        if ipv4
        else (("/proc/net/tcp6", True),)
    )
    for table, ipv6 in tables:
        local_field, remote_field = (
            proc_field(as_ipv6(ip) if ipv6 else ip, port) for ip, port in (local, remote)
        )
        try:
            rows = Path(table).read_bytes()
        except OSError:  # no IPv6 on this host
            continue
        inode = inode_in_table(rows, local_field, remote_field)
        if inode is not None:
            return inode
    return None


def inode_in_table(rows: bytes, local: str, remote: str) -> int | None:
    """The inode of the established row of ``rows`` (a ``/proc/net/tcp``) from ``local`` to
    ``remote`` (fields as ``proc_field`` prints them); a row that does not read as one is
    skipped."""
    wanted = [field.encode() for field in (local, remote, ESTABLISHED)]
    needle = b" " + b" ".join(wanted) + b" "
    start = rows.find(needle)
    while start != -1:
        row_start = rows.rfind(b"\n", 0, start) + 1
        row_end = rows.find(b"\n", start)
        fields = rows[row_start : row_end if row_end != -1 else len(rows)].split()
        if fields[1:4] == wanted and len(fields) > 9:
            inode = fields[9]
            if inode.isdigit() and int(inode) != 0:  # 0: an orphan, held by no process
                return int(inode)
        start = rows.find(needle, start + 1)
    return None


def holds_socket(pid: int, inode: int) -> bool:
    """Whether ``pid`` has the socket ``inode`` open; OSError when its descriptors cannot be
    listed (gone, or another user's process)."""
    target = f"socket:[{inode}]"
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            if os.readlink(f"{fds}/{fd}") == target:
                return True
        except OSError:  # closed meanwhile
            continue
    return False
