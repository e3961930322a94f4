"""The management console: Gearman::Driver's line protocol on TCP and/or a unix socket.

It lives inside the master's single-threaded selector loop, so nothing here may block or
grow without bound: sockets are non-blocking, a line is at most 4 KiB, a client that does
not read its replies is throttled and then dropped, idle connections are closed from
``tick``, and a failing command is answered, never raised into the loop. Commands and their
wording live in :mod:`gearman_driver.console_commands`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable

from .console_commands import (
    Controller,
    JobRow,
    ProcessRow,
    Reply,
    handle_line,
)
from .paths import CannotCreate, describe_path_error, kind_of

__all__ = ["ConsoleServer", "Controller", "JobRow", "ProcessRow"]

MAX_LINE = 4096
MAX_CONNECTIONS = 64
RECV_SIZE = 4096
OUTPUT_HIGH_WATER = 64 * 1024  # stop reading new commands until the client catches up
OUTPUT_LIMIT = 1024 * 1024  # a client this far behind is not reading at all: drop it
LINGER = 2.0  # after our last reply, drain the client's input so it sees the reply, not RST
ACCEPT_BATCH = 32
ACCEPT_PAUSE = 1.0  # out of fds: stop accepting for a while instead of spinning
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)  # EPIPE, never SIGPIPE, whatever the handlers

_TOO_MANY = f"ERR too_many_connections: max {MAX_CONNECTIONS}\n.\n".encode()
_TOO_LONG = Reply((f"ERR line_too_long: max {MAX_LINE} bytes",), close=True)

Handler = Callable[[int], None]


class _Conn:
    """One client: bounded input and output buffers and a small close state machine."""

    def __init__(self, server: ConsoleServer, sock: socket.socket, peer: str, now: float):
        self.server = server
        self.sock = sock
        self.peer = peer
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last_active = now
        self.closing = False  # no more commands; hang up once the output is flushed
        self.linger_until: float | None = None
        self.events = 0

    def on_event(self, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self.flush()
                self.process_lines()
            if mask & selectors.EVENT_READ and self.sock.fileno() >= 0:
                self.read()
            self.update_interest()
        except Exception:  # a bug here must cost one connection, not the master
            self.server.log.exception("console connection %s failed", self.peer)
            self.drop()

    def read(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop()
            return
        if self.linger_until is not None:
            if not data:
                self.drop()
            return  # discarded: we are only waiting for the client to go away
        if not data:  # EOF: a last line without newline still counts (printf cmd | nc)
            if self.inbuf and not self.closing:
                self.inbuf += b"\n"
                self.process_lines()
            self.closing = True
            self.flush()
            return
        self.last_active = time.monotonic()
        self.inbuf += data
        self.process_lines()

    def process_lines(self) -> None:
        """Answer every complete buffered line, unless the client is not keeping up."""
        while not self.closing and self.sock.fileno() >= 0:
            if len(self.outbuf) >= OUTPUT_HIGH_WATER:
                self.flush()
                if len(self.outbuf) >= OUTPUT_HIGH_WATER:
                    break  # resumed from on_event once the client has read some
            end = self.inbuf.find(b"\n")
            if end < 0:
                if len(self.inbuf) > MAX_LINE + 1:  # +1: room for the CR of a CRLF
                    self.respond(_TOO_LONG)
                break
            line = bytes(self.inbuf[:end])
            del self.inbuf[: end + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > MAX_LINE:
                self.respond(_TOO_LONG)
                break
            reply = handle_line(self.server.controller, line, self.server.log, self.peer)
            if reply is not None:
                self.respond(reply)
        self.flush()

    def respond(self, reply: Reply) -> None:
        if reply.terminate:
            self.outbuf += "".join(f"{line}\n" for line in (*reply.lines, ".")).encode()
        if reply.close:
            self.closing = True
            self.inbuf.clear()
        if len(self.outbuf) > OUTPUT_LIMIT:
            self.server.log.warning(
                "console %s: more than %d bytes unread, closing", self.peer, OUTPUT_LIMIT
            )
            self.drop()

    def flush(self) -> None:
        while self.outbuf and self.sock.fileno() >= 0:
            try:
                sent = self.sock.send(self.outbuf, _NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.drop()
                return
            del self.outbuf[:sent]
            self.last_active = time.monotonic()
        if self.closing and self.linger_until is None and self.sock.fileno() >= 0:
            self.start_linger()

    def start_linger(self) -> None:
        """Half-close and read until EOF: closing with unread input would send RST, and the
        client could lose the reply it has not read yet (e.g. after ERR line_too_long)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.drop()
            return
        self.inbuf.clear()
        self.linger_until = time.monotonic() + LINGER

    def update_interest(self) -> None:
        if self.sock.fileno() < 0:
            return
        want = 0
        if self.linger_until is not None or (
            not self.closing and len(self.outbuf) < OUTPUT_HIGH_WATER
        ):
            want |= selectors.EVENT_READ
        if self.outbuf and self.linger_until is None:
            want |= selectors.EVENT_WRITE
        sel = self.server.selector
        if want == self.events:
            return
        if not want:
            sel.unregister(self.sock)
        elif not self.events:
            sel.register(self.sock, want, self.on_event)
        else:
            sel.modify(self.sock, want, self.on_event)
        self.events = want

    def expired(self, now: float, idle_timeout: float) -> bool:
        if self.linger_until is not None:
            return now >= self.linger_until
        return now - self.last_active >= idle_timeout

    def drop(self) -> None:
        """Unregister and close; safe to call twice."""
        if self.sock.fileno() >= 0:
            if self.events:
                try:
                    self.server.selector.unregister(self.sock)
                except (KeyError, ValueError):
                    pass
            self.events = 0
            self.sock.close()
        self.outbuf.clear()
        self.inbuf.clear()
        self.server.conns.discard(self)


class _Listener:
    def __init__(self, server: ConsoleServer, sock: socket.socket, label: str) -> None:
        self.server = server
        self.sock = sock
        self.label = label
        self.registered = False
        self.paused_until = 0.0

    def register(self) -> None:
        self.server.selector.register(self.sock, selectors.EVENT_READ, self.on_event)
        self.registered = True

    def unregister(self) -> None:
        if self.registered:
            try:
                self.server.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.registered = False

    def on_event(self, mask: int) -> None:
        try:
            self.accept_some()
        except Exception:
            self.server.log.exception("console accept on %s failed", self.label)

    def accept_some(self) -> None:
        server = self.server
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    server.log.warning("console: cannot accept on %s: %s", self.label, exc)
                    self.unregister()
                    self.paused_until = time.monotonic() + ACCEPT_PAUSE
                    return
                continue  # ECONNABORTED and friends: that client is gone already
            sock.setblocking(False)
            if len(server.conns) >= MAX_CONNECTIONS:
                try:
                    sock.send(_TOO_MANY, _NOSIGNAL)
                except OSError:
                    pass
                sock.close()
                server.log.warning("console: refused a connection, %d open", MAX_CONNECTIONS)
                continue
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else self.label
            conn = _Conn(server, sock, peer, time.monotonic())
            server.conns.add(conn)
            conn.update_interest()
            server.log.debug("console: connection from %s", peer)

    def tick(self, now: float) -> None:
        if not self.registered and self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0
            self.register()


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class ConsoleServer:
    """Accepts console clients and answers them from the master's loop.

    ``port=0`` binds an ephemeral port (tests; see :attr:`address`); ``port=None`` opens no
    TCP listener, for a unix-socket-only console.
    """

    def __init__(
        self,
        controller: Controller,
        selector: selectors.BaseSelector,
        *,
        host: str = "127.0.0.1",
        port: int | None = 47300,
        socket_path: str | None = None,
        idle_timeout: float = 300.0,
        log: logging.Logger | None = None,
    ) -> None:
        if port is None and socket_path is None:
            raise ValueError("console needs a TCP port or a unix socket path")
        self.controller = controller
        self.selector = selector
        self.host = host
        self.port = port
        self.socket_path = socket_path
        self.idle_timeout = idle_timeout
        self.log = log or logging.getLogger("gearman_driver.console")
        self.conns: set[_Conn] = set()
        self._listeners: list[_Listener] = []
        self._tcp: socket.socket | None = None
        self._unix_ino: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound TCP (host, port), e.g. to learn an ephemeral port."""
        if self._tcp is None:
            raise RuntimeError("console has no open TCP listener")
        host, port = self._tcp.getsockname()[:2]
        return host, port

    @property
    def connection_count(self) -> int:
        return len(self.conns)

    def open(self) -> None:
        """Bind and listen; on CannotCreate (port in use, live socket file, a path that is not
        a socket) nothing is left open."""
        try:
            if self.port is not None:
                self._tcp = self._bind_tcp(self.host, self.port)
                self._listeners.append(_Listener(self, self._tcp, "{}:{}".format(*self.address)))
            if self.socket_path is not None:
                sock = self._bind_unix(self.socket_path)
                self._listeners.append(_Listener(self, sock, f"unix:{self.socket_path}"))
            for listener in self._listeners:
                listener.register()
        except BaseException:
            self.close()
            raise
        for listener in self._listeners:
            self.log.info("console listening on %s", listener.label)

    def _bind_tcp(self, host: str, port: int) -> socket.socket:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise CannotCreate(exc.errno, f"console_port {port} on {host or '*'}: "
                                          f"{exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        if not _is_loopback(sock.getsockname()[0]):
            self.log.warning("console has no authentication; listening on %s", host or "*")
        return sock

    def _bind_unix(self, path: str) -> socket.socket:
        """Bind with mode 0600 from the start (umask, not a later chmod, so there is no window)
        after removing a stale socket file; refuse a live one or a non-socket (a symlink too:
        lstat, so a planted link never makes us unlink or bind somewhere else)."""
        try:
            return self._bind_unix_path(path)
        except CannotCreate:
            raise
        except OSError as exc:
            raise CannotCreate(exc.errno, f"console_socket {path}: "
                                          f"{describe_path_error(path, exc)}") from None

    def _bind_unix_path(self, path: str) -> socket.socket:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise CannotCreate(errno.EEXIST, f"console_socket {path}: is "
                                                 f"{kind_of(st.st_mode)}, not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # stale: its server is gone
            else:
                raise CannotCreate(errno.EADDRINUSE, f"console_socket {path}: in use by a "
                                                     "running server")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            self._unix_ino = os.stat(path).st_ino
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def tick(self, now: float) -> None:
        """Close idle and lingering connections; resume accepting after fd exhaustion."""
        for conn in list(self.conns):
            if conn.expired(now, self.idle_timeout):
                if conn.linger_until is None:
                    idle = now - conn.last_active
                    self.log.info("console %s: idle for %.0f s, closing", conn.peer, idle)
                conn.drop()
        for listener in self._listeners:
            listener.tick(now)

    def close(self) -> None:
        """Stop listening and hang up on everyone (best-effort flush of pending replies)."""
        for conn in list(self.conns):
            try:
                conn.flush()
            except Exception:
                pass
            conn.drop()
        for listener in self._listeners:
            listener.unregister()
            listener.sock.close()
        self._listeners.clear()
        self._tcp = None
        if self.socket_path is not None and self._unix_ino is not None:
            try:
                if os.stat(self.socket_path).st_ino == self._unix_ino:  # not a successor's
                    os.unlink(self.socket_path)
            except OSError:
                pass
            self._unix_ino = None

    def close_in_child(self) -> None:
        """Close our fds in a freshly forked child. No selector calls (epoll_ctl would change
        the parent's shared epoll set), no shutdown() (it would cut the parent's connections),
        no unlink of the socket file (it is the parent's)."""
        for conn in self.conns:
            conn.sock.close()
        for listener in self._listeners:
            listener.sock.close()
        self.conns = set()
        self._listeners = []
        self._tcp = None
        self._unix_ino = None
