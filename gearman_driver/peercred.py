"""Who is on the other end of a console connection: the peer's uid, from the kernel.

A unix socket says it directly (SO_PEERCRED). For TCP, Linux lists every socket of the
network namespace in /proc/self/net/tcp and tcp6 with its owner's uid (read through self/: the
unit's ProcSubset=pid hides /proc/net, not the process's own directory); the client's
socket is the entry whose local address is our peer and whose remote address is us. An entry
with inode 0 belongs to no open file any more (closed, orphaned, TIME_WAIT) and is listed as
uid 0, so it proves nothing: such a peer, like one on another host, has no known uid.
"""

from __future__ import annotations

import ipaddress
import pwd
import socket
import struct
from collections.abc import Iterable

__all__ = ["ANYONE", "peer_uid", "resolve_users"]

#: The console_allow_users entry that lets every user change things.
ANYONE = "*"

_TABLES = ("/proc/self/net/tcp", "/proc/self/net/tcp6")
_Address = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A /proc/net/tcp address: 32-bit words in host byte order, v4-mapped v6 made v4."""
    words = [int(text[i:i + 8], 16) for i in range(0, len(text), 8)]
    raw = struct.pack(f"={len(words)}I", *words)
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _endpoint(text: str) -> _Address:
    host, port = text.split(":")
    return _ip(host), int(port, 16)


def _normal(addr: tuple[str, int] | tuple[str, int, int, int]) -> _Address:
    address = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, addr[1]


def tcp_owner(peer: _Address, ours: _Address, tables: Iterable[str] = _TABLES) -> int | None:
    """The uid owning the socket at `peer` connected to `ours`, if the kernel lists it."""
    for table in tables:
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)  # the header
                for line in lines:
                    fields = line.split()
                    if len(fields) < 10 or fields[9] == "0":
                        continue
                    try:
                        if _endpoint(fields[1]) == peer and _endpoint(fields[2]) == ours:
                            return int(fields[7])
                    except ValueError:
                        continue
        except OSError:
            continue
    return None


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of an accepted connection; None if unknown."""
    try:
        if sock.family == socket.AF_UNIX:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            return int(struct.unpack("3i", creds)[1])
        return tcp_owner(_normal(sock.getpeername()), _normal(sock.getsockname()))
    except (OSError, ValueError):
        return None


def resolve_users(entries: Iterable[str | float]) -> frozenset[int] | None:
    """console_allow_users to uids; None means anyone. KeyError names an unknown user."""
    uids = set()
    for entry in entries:
        if entry == ANYONE:
            return None
        if isinstance(entry, str) and not entry.isdigit():
            uids.add(pwd.getpwnam(entry).pw_uid)
        else:  # a uid: an integer, 7.0 as YAML may give it, or digits from the command line
            uids.add(int(entry))
    return frozenset(uids)
