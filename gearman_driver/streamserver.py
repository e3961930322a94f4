"""Bounded, non-blocking stream servers inside the master's selector loop.

The console and the metrics endpoint share this: nothing here may block or grow without
bound. Sockets are non-blocking; connections are counted per listener, so a flood on one
(TCP) does not lock out another (the unix socket); one over the limit makes room (the
subclass says whom to close) or gets a short refusal and is closed; input and output
buffers are bounded (a client that does not read is throttled, then dropped); idle
connections are closed from ``tick``; out of file descriptors, accepting pauses instead of
spinning; and a bug in one connection's handler costs that connection, never the loop. A
subclass of :class:`Connection` says what a request is (``process``); a subclass of
:class:`StreamServer` how to make one.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import selectors
import socket
import time

from gearman_driver.paths import CannotCreate

RECV_SIZE = 4096
OUTPUT_HIGH_WATER = 64 * 1024  # stop reading new requests until the client catches up
OUTPUT_LIMIT = 1024 * 1024  # a client this far behind is not reading at all: drop it
LINGER = 2.0  # after our last reply, drain the client's input so it sees the reply, not RST
ACCEPT_BATCH = 32
ACCEPT_PAUSE = 1.0  # out of fds: stop accepting for a while instead of spinning
NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)  # EPIPE, never SIGPIPE, whatever the handlers


class Connection:
    """One client: bounded input and output buffers and a small close state machine."""

    def __init__(self, server: StreamServer, sock: socket.socket, peer: str, now: float):
        self.server = server
        self.sock = sock
        self.peer = peer
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last_active = now
        self.closing = False  # no more requests; hang up once the output is flushed
        self.linger_until: float | None = None
        self.events = 0
        self.listener: Listener | None = None  # the one that accepted it (its budget)
        # a reply is being prepared elsewhere (console `reload`): read nothing more, never
        # hang up or time out before it is sent
        self.waiting = False
        # requests are left over for the server's next tick (its budget for this turn is
        # spent): read nothing more until they are answered
        self.backlogged = False

    # -- what a protocol provides -------------------------------------------------------------
    def process(self) -> None:
        """Answer what is complete in `inbuf` (called after each read and each flush)."""
        raise NotImplementedError

    def on_eof(self) -> None:
        """The client has sent all it will; by default, hang up once the replies are out."""
        self.closing = True
        self.flush()

    # -- the mechanics ------------------------------------------------------------------------
    def on_event(self, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self.flush()
                self.process()
            if mask & selectors.EVENT_READ and self.sock.fileno() >= 0:
                self.read()
            self.update_interest()
        except Exception:  # a bug here must cost one connection, not the master
            self.server.log.exception("%s connection %s failed", self.server.name, self.peer)
            self.drop()

    def resume(self) -> None:
        """Answer the requests left over from an earlier turn (`backlogged`)."""
        self.backlogged = False
        try:
            if self.sock.fileno() >= 0:
                self.process()
                self.update_interest()
        except Exception:  # as in on_event
            self.server.log.exception("%s connection %s failed", self.server.name, self.peer)
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
        if not data:
            self.on_eof()
            return
        self.last_active = time.monotonic()
        self.inbuf += data
        self.process()

    def queue(self, data: bytes) -> None:
        """Add to the output; a client more than `output_limit` bytes behind is dropped."""
        self.outbuf += data
        if len(self.outbuf) > self.server.output_limit:
            self.server.log.warning("%s %s: more than %d bytes unread, closing",
                                    self.server.name, self.peer, self.server.output_limit)
            self.drop()

    def flush(self) -> None:
        while self.outbuf and self.sock.fileno() >= 0:
            try:
                sent = self.sock.send(self.outbuf, NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.drop()
                return
            del self.outbuf[:sent]
            self.last_active = time.monotonic()
        if self.closing and not self.waiting and self.linger_until is None \
                and self.sock.fileno() >= 0:
            self.start_linger()

    def start_linger(self) -> None:
        """Half-close and read until EOF: closing with unread input would send RST, and the
        client could lose the reply it has not read yet (e.g. after an error reply)."""
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
            not self.closing and not self.waiting and not self.backlogged
            and len(self.outbuf) < OUTPUT_HIGH_WATER
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
        return not self.waiting and now - self.last_active >= idle_timeout

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


class Listener:
    """One listening socket of a server: accepts in batches, refuses past the limit.

    `address` says what it listens on (("tcp", host, port) or ("unix", path)), so that a
    reload moving a server keeps the listeners whose address did not change. A unix socket's
    file is removed when its listener closes, unless another server has replaced it since
    (its inode, `unix_ino`, differs)."""

    def __init__(self, server: StreamServer, sock: socket.socket, label: str,
                 address: tuple[object, ...] = (), unix_ino: int | None = None) -> None:
        self.server = server
        self.sock = sock
        self.label = label
        self.address = address
        self.unix_ino = unix_ino
        self.registered = False
        self.paused_until = 0.0

    def close(self) -> None:
        """Stop listening for good; remove our socket file (not a successor's)."""
        self.unregister()
        self.sock.close()
        if self.address[:1] == ("unix",) and self.unix_ino is not None:
            path = str(self.address[1])
            try:
                if os.stat(path).st_ino == self.unix_ino:
                    os.unlink(path)
            except OSError:
                pass
            self.unix_ino = None

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
            self.server.log.exception("%s accept on %s failed", self.server.name, self.label)

    def accept_some(self) -> None:
        server = self.server
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    server.log.warning("%s: cannot accept on %s: %s", server.name, self.label,
                                       exc)
                    self.unregister()
                    self.paused_until = time.monotonic() + ACCEPT_PAUSE
                    return
                continue  # ECONNABORTED and friends: that client is gone already
            sock.setblocking(False)
            mine = [conn for conn in server.conns if conn.listener is self]
            if len(mine) >= server.max_connections and not server.make_room(mine):
                try:
                    sock.send(server.refusal, NOSIGNAL)
                except OSError:
                    pass
                sock.close()
                server.log.warning("%s: refused a connection, %d open", server.name,
                                   server.max_connections)
                continue
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else self.label
            conn = server.connection(sock, peer, time.monotonic())
            conn.listener = self
            server.conns.add(conn)
            conn.update_interest()
            server.log.debug("%s: connection from %s", server.name, peer)

    def tick(self, now: float) -> None:
        if not self.registered and self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0
            self.register()


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class StreamServer:
    """Listeners and connections of one service; the subclass makes its connections."""

    name = "server"  # in log lines
    refusal = b""  # sent to a connection over max_connections before it is closed
    output_limit = OUTPUT_LIMIT

    def __init__(self, selector: selectors.BaseSelector, *, max_connections: int,
                 idle_timeout: float, log: logging.Logger) -> None:
        self.selector = selector
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.log = log
        self.conns: set[Connection] = set()
        self._listeners: list[Listener] = []
        self._tcp: socket.socket | None = None

    def connection(self, sock: socket.socket, peer: str, now: float) -> Connection:
        raise NotImplementedError

    def make_room(self, full: list[Connection]) -> bool:
        """Every connection slot of a listener (`full`: its connections) is taken: free one
        for a newcomer (True), or refuse it."""
        return False

    @property
    def address(self) -> tuple[str, int]:
        """The bound TCP (host, port), e.g. to learn an ephemeral port."""
        if self._tcp is None:
            raise RuntimeError(f"{self.name} has no open TCP listener")
        host, port = self._tcp.getsockname()[:2]
        return host, port

    @property
    def listeners(self) -> list[Listener]:
        """The listeners open now (a reload's `prepare` keeps those whose address stays)."""
        return list(self._listeners)

    @property
    def connection_count(self) -> int:
        return len(self.conns)

    def add_listener(self, sock: socket.socket, label: str) -> None:
        self._listeners.append(Listener(self, sock, label))

    def register_listeners(self) -> None:
        for listener in self._listeners:
            listener.register()
        for listener in self._listeners:
            self.log.info("%s listening on %s", self.name, listener.label)

    def bind_tcp(self, host: str, port: int, key: str) -> None:
        """Bind and listen on TCP; CannotCreate names the config `key` ("console_port")."""
        listener = self.tcp_listener(host, port, key)
        self._listeners.append(listener)
        self._tcp = listener.sock

    def tcp_listener(self, host: str, port: int, key: str) -> Listener:
        """A bound, listening, not yet registered TCP listener on host:port; CannotCreate
        names the config `key` ("console_port")."""
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except OSError as exc:  # socket.gaierror: no such host
            raise CannotCreate(exc.errno, f"{key} {port} on {host or '*'}: "
                                          f"{exc.strerror or exc}") from None
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise CannotCreate(exc.errno, f"{key} {port} on {host or '*'}: "
                                          f"{exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        if not is_loopback(sock.getsockname()[0]):
            self.log.warning("%s has no authentication; listening on %s", self.name,
                             host or "*")
        bound = sock.getsockname()
        return Listener(self, sock, f"{bound[0]}:{bound[1]}", ("tcp", host, port))

    def listener_at(self, address: tuple[object, ...]) -> Listener | None:
        """The open listener on `address`, if any."""
        return next((x for x in self._listeners if x.address == address), None)

    def swap_listeners(self, listeners: list[Listener]) -> None:
        """Listen on `listeners` from now on (a reload moved the server): the ones kept go on,
        the others close, the new ones start accepting. Connections are not touched: a
        client that asked for the reload still gets its answer on the connection it used."""
        for old in self._listeners:
            if old not in listeners:
                old.close()
        for new in listeners:
            if new not in self._listeners:
                new.register()
                self.log.info("%s listening on %s", self.name, new.label)
        self._listeners = list(listeners)
        self._tcp = next((x.sock for x in listeners if x.address[:1] == ("tcp",)), None)

    def tick(self, now: float) -> None:
        """Close idle and lingering connections; resume accepting after fd exhaustion."""
        for conn in list(self.conns):
            if conn.expired(now, self.idle_timeout):
                if conn.linger_until is None:
                    idle = now - conn.last_active
                    self.log.info("%s %s: idle for %.0f s, closing", self.name, conn.peer, idle)
                conn.drop()
        for listener in self._listeners:
            listener.tick(now)

    def close(self) -> None:
        """Stop listening and hang up on everyone (best-effort flush of pending replies)."""
        for conn in list(self.conns):
            try:
                conn.flush()
            except OSError:
                pass
            conn.drop()
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        self._tcp = None

    def close_in_child(self) -> None:
        """Close our fds in a freshly forked child. No selector calls (epoll_ctl would change
        the parent's shared epoll set), no shutdown() (it would cut the parent's connections)."""
        for conn in self.conns:
            conn.sock.close()
        for listener in self._listeners:
            listener.sock.close()
        self.conns = set()
        self._listeners = []
        self._tcp = None
