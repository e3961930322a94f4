"""The management console: Gearman::Driver's line protocol on TCP and/or a unix socket.

It lives inside the master's single-threaded selector loop, so nothing here may block or
grow without bound: sockets are non-blocking, a line is at most 4 KiB, a client that does
not read its replies is throttled and then dropped, idle connections are closed from
``tick``, and a failing command is answered, never raised into the loop. Commands and their
wording live in :mod:`gearman_driver.console.commands`.

A client must send each line within LINE_TIMEOUT seconds of its first byte (and its first
line within LINE_TIMEOUT of connecting), or it is closed; each listener has its own budget of
MAX_CONNECTIONS, and a full one closes a connection that is still owing a line (else the one
idle longest) to let a newcomer in. So idle or byte-a-second connections cannot lock out
the console, and a flood on TCP leaves the unix socket alone.

The console is no local root shell: a command that changes something is run only for root,
the daemon's own user and the users of ``console_allow_users``; the peer's uid comes from
the kernel (:mod:`gearman_driver.peercred`), on TCP as on the unix socket.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import time

from gearman_driver.console.commands import Controller, Reply, handle_line
from gearman_driver.console.replies import JobRow, ProcessRow
from gearman_driver.paths import CannotCreate, describe_path_error, kind_of
from gearman_driver.peercred import peer_uid
from gearman_driver.ports import CONSOLE_PORT
from gearman_driver.streamserver import (
    NOSIGNAL,
    OUTPUT_HIGH_WATER,
    RECV_SIZE,
    Connection,
    Listener,
    StreamServer,
)

__all__ = ["MAX_CONNECTIONS", "MAX_LINE", "OUTPUT_HIGH_WATER", "RECV_SIZE", "ConsoleServer",
           "Controller", "JobRow", "ProcessRow"]

MAX_LINE = 4096
MAX_CONNECTIONS = 64  # per listener: TCP and the unix socket each have this many
LINE_TIMEOUT = 5.0  # seconds to finish a line once begun (the first one: once connected)
SHED_LOG_EVERY = 10.0  # closed-for-slowness connections are summed up in one line this often

_TOO_LONG = Reply((f"ERR line_too_long: max {MAX_LINE} bytes",), close=True)


class _Conn(Connection):
    """One console client: lines in, replies ending with a "." line out."""

    server: ConsoleServer
    _uid: int | None = None  # the peer's, once learned

    def __init__(self, server: ConsoleServer, sock: socket.socket, peer: str, now: float):
        super().__init__(server, sock, peer, now)
        # since when a line is owed: the first one from the start, later from its first byte
        self.owing_since: float | None = now

    def overdue(self, now: float) -> bool:
        """Owing a line for LINE_TIMEOUT, and not because we stopped reading (a pending
        reload, a reply the client has not read)."""
        return (self.owing_since is not None and now - self.owing_since >= LINE_TIMEOUT
                and not self.waiting and not self.closing and self.linger_until is None)

    def authorize(self) -> str | None:
        """None when this peer may change things; otherwise why not (for the ERR line)."""
        allowed = self.server.allowed_uids
        if allowed is None:
            return None
        if self._uid is None:
            self._uid = peer_uid(self.sock)
        uid = self._uid
        me = os.geteuid()
        if uid is not None and (uid in (0, me) or uid in allowed):
            return None
        who = f"uid {uid}" if uid is not None else "a peer whose uid is unknown (not local)"
        return (f"{who} may not change anything; only root, the daemon's user (uid {me}) "
                "and console_allow_users may")

    def on_eof(self) -> None:
        """A last line without newline still counts (printf cmd | nc)."""
        if self.inbuf and not self.closing:
            self.inbuf += b"\n"
            self.process()
        super().on_eof()

    def process(self) -> None:
        """Answer every complete buffered line, unless the client is not keeping up."""
        while not self.closing and not self.waiting and self.sock.fileno() >= 0:
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
            reply = handle_line(self.server.controller, line, self.server.log, self.peer,
                                self.authorize)
            if reply is not None:
                self.respond(reply)
        if not self.inbuf or b"\n" in self.inbuf:  # nothing owed, or lines wait on us
            self.owing_since = None
        elif self.owing_since is None:
            self.owing_since = time.monotonic()
        self.flush()

    def respond(self, reply: Reply) -> None:
        if reply.later is not None:
            self.waiting = True
            reply.later(self)
            return
        if reply.close:
            self.closing = True
            self.inbuf.clear()
        if reply.terminate:
            self.queue("".join(f"{line}\n" for line in (*reply.lines, ".")).encode())

    def detach(self) -> int | None:
        """Deferred's: an inheritable duplicate of the socket, for the master that follows a
        re-exec (it answers and serves the client from then on); here it is let go quietly,
        without a reply, without even a shutdown (which would cut it for the new master)."""
        if self.sock.fileno() < 0:
            return None
        fd = os.dup(self.sock.fileno())  # os.dup's descriptor is not inheritable ...
        os.set_inheritable(fd, True)  # ... this one must survive the exec
        self.outbuf.clear()
        self.drop()
        return fd

    def answer(self, reply: Reply) -> None:
        """Deferred's: send the reply and go on with the client's next commands."""
        self.waiting = False
        if self.sock.fileno() < 0:
            return  # the client went away meanwhile
        try:
            self.respond(reply)
            self.process()
            self.update_interest()
        except Exception:  # as in on_event: a bug costs this connection, not the master
            self.server.log.exception("console connection %s failed", self.peer)
            self.drop()


class ConsoleServer(StreamServer):
    """Accepts console clients and answers them from the master's loop.

    ``port=0`` binds an ephemeral port (tests; see :attr:`address`); ``port=None`` opens no
    TCP listener, for a unix-socket-only console.
    """

    name = "console"
    refusal = f"ERR too_many_connections: max {MAX_CONNECTIONS}\n.\n".encode()

    def __init__(
        self,
        controller: Controller,
        selector: selectors.BaseSelector,
        *,
        host: str = "127.0.0.1",
        port: int | None = CONSOLE_PORT,
        socket_path: str | None = None,
        idle_timeout: float = 300.0,
        allowed_uids: frozenset[int] | None = frozenset(),
        log: logging.Logger | None = None,
    ) -> None:
        """``allowed_uids``: who besides root and the daemon's user may change things; None
        lets anyone (console_allow_users: ["*"]). With neither a port nor a socket path it
        listens nowhere and only serves clients handed to it (`adopt`)."""
        super().__init__(selector, max_connections=MAX_CONNECTIONS, idle_timeout=idle_timeout,
                         log=log or logging.getLogger("gearman_driver.console"))
        self.controller = controller
        self.allowed_uids = allowed_uids
        self.shed = {"slow": 0, "evicted": 0}  # since the last summary line
        self._shed_logged = 0.0
        self.host = host
        self.port = port
        self.socket_path = socket_path

    def connection(self, sock: socket.socket, peer: str, now: float) -> Connection:
        return _Conn(self, sock, peer, now)

    def adopt(self, fd: int) -> _Conn:
        """A client handed over by the master before a re-exec (see `_Conn.detach`): served
        from now on, waiting for the reply to the `reload` it sent to the master before."""
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        sock.setblocking(False)
        label = self._listeners[0] if self._listeners else None
        try:
            peer = sock.getpeername()
            name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        except OSError:
            name = "unix"
        conn = _Conn(self, sock, name, time.monotonic())
        conn.listener = label
        conn.waiting = True
        conn.owing_since = None
        self.conns.add(conn)
        conn.update_interest()
        return conn

    def make_room(self, full: list[Connection]) -> bool:
        """A listener is full: close the connection owing a line longest, else the one idle
        longest; never one with a reply in flight or a pending reload."""
        free = [c for c in full if isinstance(c, _Conn) and not c.outbuf and not c.waiting
                and c.linger_until is None]
        if not free:
            return False
        owing = [c for c in free if c.owing_since is not None]
        victim = min(owing, key=lambda c: c.owing_since or 0.0) if owing else \
            min(free, key=lambda c: c.last_active)
        self.log.debug("console: %d connections on %s, closing %s", len(full),
                       victim.listener.label if victim.listener else "?", victim.peer)
        self._hang_up(victim, "evicted", f"ERR too_many_connections: max {MAX_CONNECTIONS}")
        return True

    def _hang_up(self, conn: _Conn, why: str, line: str) -> None:
        """Best-effort last word, then close at once (no linger: the slot is wanted now)."""
        try:
            conn.sock.send(f"{line}\n.\n".encode(), NOSIGNAL)
        except OSError:
            pass
        conn.drop()
        self.shed[why] += 1

    def tick(self, now: float) -> None:
        """Close connections owing a line too long, sum them up now and then, then idle ones."""
        for conn in list(self.conns):
            if isinstance(conn, _Conn) and conn.overdue(now):
                self._hang_up(conn, "slow", f"ERR line_timeout: no complete line within "
                                            f"{LINE_TIMEOUT:g} s")
        if any(self.shed.values()) and now - self._shed_logged >= SHED_LOG_EVERY:
            self.log.warning("console: closed %d connections that sent no complete line within "
                             "%g s and %d to make room, since the last such line",
                             self.shed["slow"], LINE_TIMEOUT, self.shed["evicted"])
            self.shed = {"slow": 0, "evicted": 0}
            self._shed_logged = now
        super().tick(now)

    def open(self) -> None:
        """Bind and listen; on CannotCreate (port in use, live socket file, a path that is not
        a socket) nothing is left open."""
        self.swap_listeners(self.prepare(self.host, self.port, self.socket_path))

    def prepare(self, host: str, port: int | None, socket_path: str | None) -> list[Listener]:
        """The listeners for these addresses: those open already, the others bound now (not
        yet accepting). CannotCreate says why one cannot be, and then nothing new is left
        open; a reload is refused on it before it closes a working console."""
        wanted: list[tuple[object, ...]] = []
        if port is not None:
            wanted.append(("tcp", host, port))
        if socket_path is not None:
            wanted.append(("unix", socket_path))
        listeners: list[Listener] = []
        try:
            for address in wanted:
                current = self.listener_at(address)
                if current is not None:
                    listeners.append(current)
                elif address[0] == "tcp":
                    listeners.append(self.tcp_listener(host, port or 0, "console_port"))
                else:
                    listeners.append(self._unix_listener(str(address[1])))
        except BaseException:
            for listener in listeners:
                if listener not in self._listeners:
                    listener.close()
            raise
        return listeners

    def commit(self, listeners: list[Listener], host: str, port: int | None,
               socket_path: str | None) -> None:
        """Listen on what `prepare` gave for these addresses from now on (no listener at all
        turns the console off for newcomers; its connections are answered to the end)."""
        self.host, self.port, self.socket_path = host, port, socket_path
        self.swap_listeners(listeners)

    def _unix_listener(self, path: str) -> Listener:
        """Bind with mode 0600 from the start (umask, not a later chmod, so there is no window)
        after removing a stale socket file; refuse a live one or a non-socket (a symlink too:
        lstat, so a planted link never makes us unlink or bind somewhere else)."""
        try:
            sock = self._bind_unix_path(path)
        except CannotCreate:
            raise
        except OSError as exc:
            raise CannotCreate(exc.errno, f"console_socket {path}: "
                                          f"{describe_path_error(path, exc)}") from None
        try:
            ino = os.stat(path).st_ino
        except OSError:
            ino = None
        return Listener(self, sock, f"unix:{path}", ("unix", path), ino)

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
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

