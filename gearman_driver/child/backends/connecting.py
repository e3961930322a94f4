"""Connecting to one gearmand without ever blocking, for both worker backends.

A silent or black-holed server must never hold up a worker's other servers, so every connect
is non-blocking and bounded:

- `Connector` makes one attempt: it resolves the server's name and connects to each address
  in turn (as `socket.create_connection` does: ``localhost`` may be ::1 first while gearmand
  listens on 127.0.0.1 only), each for at most `connect_timeout(keepalive)` seconds, with the
  keepalive options set on every socket before it connects (gearman_driver/keepalive.py).
  Its owner waits for writability however it waits (the native backend's selector, or a
  zero-timeout poll in the pygearman backend's loop) and calls `check`.
- `Backoff` spaces the attempts after a failure or a lost connection: capped, jittered,
  exponential, back to the first step once the server confirmed the registration.

Host names are resolved with a blocking `getaddrinfo` at each attempt: prefer IP addresses or
names from /etc/hosts.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  getaddrinfo imports it on first use: before the fork
import errno
import os
import random
import select
import socket
import time
from typing import Any

from gearman_driver.child.backends.base import Server
from gearman_driver.keepalive import connect_timeout, set_keepalive

INITIAL_BACKOFF = 0.1
_Address = tuple[int, int, int, tuple[Any, ...]]  # family, type, proto, sockaddr
_IN_PROGRESS = (0, errno.EINPROGRESS, errno.EAGAIN, errno.EINTR)


class Backoff:
    """When to try a server again: after each failure the wait doubles (jittered, so many
    processes do not stampede a server that comes back) up to `max_delay`."""

    __slots__ = ("retry_at", "delay", "max_delay", "failures")

    def __init__(self, max_delay: float) -> None:
        self.retry_at = 0.0
        self.delay = INITIAL_BACKOFF
        self.max_delay = max_delay
        self.failures = 0  # attempts in a row that failed: only the first is worth a log line

    def failed(self, now: float) -> None:
        self.retry_at = now + self.delay * random.uniform(0.8, 1.0)
        self.delay = min(self.delay * 2, self.max_delay)
        self.failures += 1

    def reset(self) -> None:
        """The server took our registration: the next outage starts from the first step."""
        self.delay = INITIAL_BACKOFF
        self.failures = 0


class Connector:
    """One non-blocking connect attempt to `server`, address by address (module docstring)."""

    __slots__ = ("server", "keepalive", "timeout", "sock", "deadline", "errors", "_addrs",
                 "_addr")

    def __init__(self, server: Server, keepalive: float) -> None:
        self.server = server
        self.keepalive = keepalive
        self.timeout = connect_timeout(keepalive)
        self.sock: socket.socket | None = None  # the address being connected to
        self.deadline = 0.0  # monotonic: give up on this address then
        self.errors: list[tuple[str, str]] = []  # (address, reason) of this attempt
        self._addrs: list[_Address] = []  # addresses of this attempt not tried yet
        self._addr: _Address | None = None

    def begin(self) -> None:
        """Resolve the name and begin connecting to its first address. OSError when no
        address could even be tried (the name does not resolve, every connect failed at once)."""
        host, port = self.server
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        self._addrs = [(family, kind, proto, addr) for family, kind, proto, _, addr in infos]
        self.errors = []
        self._next()

    def check(self) -> bool:
        """The socket is writable: True once connected (take it with `take`); False when this
        address failed and the next one is being tried (a new `sock`); OSError when every
        address failed."""
        assert self.sock is not None
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            return True
        self._next_after(os.strerror(err))
        return False

    def poll(self, now: float) -> bool:
        """For an owner without a selector: connected now? (False: still trying; the
        address may have changed.) OSError when every address failed."""
        if self.sock is None:
            raise ConnectionError("not connecting")
        if now >= self.deadline:
            self.timed_out()
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT)
        return bool(poller.poll(0)) and self.check()

    def timed_out(self) -> None:
        """The address in progress passed its deadline: go on with the next one."""
        self._next_after(f"no answer in {self.timeout:g} s")

    def take(self) -> socket.socket:
        """The connected socket, now the owner's."""
        sock, self.sock = self.sock, None
        assert sock is not None
        return sock

    def close(self) -> None:
        """Abandon the attempt."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._addrs = []

    def _next_after(self, reason: str) -> None:
        if self._addr is not None:
            self.errors.append((address_label(self._addr[3]), reason))
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._next()

    def _next(self) -> None:
        """Begin connecting to the next untried address; when none is left, ConnectionError
        naming every address and why it failed."""
        while self._addrs:
            self._addr = family, kind, proto, addr = self._addrs.pop(0)
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                self.errors.append((address_label(addr), exc.strerror or str(exc)))
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                set_keepalive(sock, self.keepalive)
                err = sock.connect_ex(addr)
            except BaseException:
                sock.close()
                raise
            if err not in _IN_PROGRESS:
                sock.close()
                self.errors.append((address_label(addr), os.strerror(err)))
                continue
            self.sock = sock
            self.deadline = time.monotonic() + self.timeout
            return
        self._addr = None
        if len(self.errors) == 1:
            raise ConnectionError(self.errors[0][1])
        raise ConnectionError("; ".join(f"{label}: {why}" for label, why in self.errors)
                              or "the name has no address")


def address_label(addr: tuple[Any, ...]) -> str:
    """``[::1]:4730`` or ``127.0.0.1:4730``, for the log line that lists the failures."""
    return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
