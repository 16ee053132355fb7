"""Whether a process on this host holds the far end of one of this process's connections.

A Postgres server's ``pg_backend_pid()`` is only its word: behind a connection pooler it names
the backend that serves the pooler (lent to other clients next), and from another pid namespace
(a server in a container, its socket shared with this host) a number that may name any process
here. Before acting on such a pid, the connection itself must lead to it, as /proc shows:

- TCP: the far end of our socket is the socket in this network namespace whose local address is
  our peer address and whose remote address is our own (``/proc/net/tcp`` and ``tcp6``); the
  process must hold it among its descriptors. A pooler's backend holds the pooler's connection,
  and a stranger neither.
- Unix socket: ``SO_PEERCRED`` names the process that listened, in our pid namespace (0 when it
  is not in it or below): the postmaster, whose children the backends are, or a pooler, whose
  children they are not.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from pathlib import Path

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[Address, int]

# /proc/net/tcp's connection state of an established socket.
ESTABLISHED = "01"


def why_not_far_end(sock: socket.socket, pid: int) -> str | None:
    """None when ``pid`` is shown to hold the far end of ``sock``; else why it is not."""
    if sock.family == socket.AF_UNIX:
        return _unix_mismatch(sock, pid)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return _tcp_mismatch(sock, pid)
    return "not a TCP or Unix socket"


def _tcp_mismatch(sock: socket.socket, pid: int) -> str | None:
    try:
        ours, peer = endpoint(sock.getsockname()), endpoint(sock.getpeername())
    except OSError:
        return "the connection is closed"
    inode = server_socket_inode(local=peer, remote=ours)
    if inode is None:
        # A remote server, a server in another network namespace (a container's port), or a
        # connection closed meanwhile.
        return "the server's end of the connection is not on this host"
    try:
        held = holds_socket(pid, inode)
    except OSError:  # gone, or another user's process
        return "the process's descriptors cannot be read"
    return None if held else "the process does not hold the server's end of our connection"


def _unix_mismatch(sock: socket.socket, pid: int) -> str | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return "the connection is closed"
    listener = struct.unpack("3i", creds)[0]  # pid, uid, gid
    if listener <= 0:
        return "the server listens from another pid namespace"
    parent = parent_pid(pid)
    if parent is None:
        return "the process is gone or cannot be read"
    if parent != listener:
        return "not a child of the listening server (a pooler, or another pid namespace)"
    return None


def endpoint(address: tuple[str, int] | tuple[str, int, int, int]) -> Endpoint:
    """A socket address as ``getsockname`` gives it, an IPv4-mapped IPv6 address as IPv4 (a
    dual-stack server's end of an IPv4 connection is an IPv6 socket)."""
    ip = ipaddress.ip_address(address[0].split("%", 1)[0])  # without an IPv6 scope
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, address[1]


def proc_endpoint(field: str) -> Endpoint:
    """``/proc/net/tcp``'s ``0100007F:1F90``: the address as 32-bit words, each printed in this
    host's byte order, then the port."""
    words, port = field.split(":")
    raw = b"".join(struct.pack("=I", int(words[i : i + 8], 16)) for i in range(0, len(words), 8))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(port, 16)


def server_socket_inode(local: Endpoint, remote: Endpoint) -> int | None:
    """The inode of the established socket in this network namespace from ``local`` to
    ``remote``; None when there is none."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:  # no IPv6 on this host
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != ESTABLISHED or fields[9] == "0":
                continue
            if proc_endpoint(fields[1]) == local and proc_endpoint(fields[2]) == remote:
                return int(fields[9])
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


def parent_pid(pid: int) -> int | None:
    """Field 4 of ``/proc/<pid>/stat``, after the parenthesised command name."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
