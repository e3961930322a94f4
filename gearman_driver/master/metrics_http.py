"""The metrics endpoint: just enough HTTP/1.x for a Prometheus scrape, in the master's loop.

No thread and no http.server: the master forks, and a thread there is a hazard. A scrape is
one small GET; this answers ``GET /metrics`` (and HEAD) with the exposition, 404 for any other
path, 405 for other methods, and closes at once a connection whose first line is not an HTTP
request. Bounds are the console's (see :mod:`gearman_driver.streamserver`), plus a request
head of at most MAX_REQUEST bytes; when every connection slot is taken, the connection idle
longest is closed to let a new one in, so idle or slow clients cannot lock a scraper out.
Keep-alive as HTTP/1.1 wants it (Prometheus reuses its connection).

No client may hold the master's loop hostage with pipelined requests: an exposition is
rendered at most once per loop turn for each Accept header (HEAD and GET share it) and at most
RENDERS_PER_TURN times in all, and one connection has at most REQUESTS_PER_TURN requests
answered per turn; what is left waits for the next turn (its connection reads nothing more
meanwhile).
"""

from __future__ import annotations

import logging
import re
import selectors
import socket
import time
from collections.abc import Callable

from gearman_driver.streamserver import (
    OUTPUT_HIGH_WATER,
    OUTPUT_LIMIT,
    Connection,
    Listener,
    StreamServer,
)

MAX_REQUEST = 8192  # request line and headers
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 60.0  # longer than any sane scrape interval between two scrapes
RENDERS_PER_TURN = 4  # expositions rendered per loop turn, over every connection
REQUESTS_PER_TURN = 16  # requests of one connection answered per loop turn
ERROR_LOG_EVERY = 60.0  # a failing render is logged (with its traceback) at most this often

#: body and Content-Type for an Accept header
Render = Callable[[str], tuple[bytes, str]]

_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (\S{1,4096}) HTTP/1\.([01])\r?")
_METHOD_SO_FAR = re.compile(rb"[A-Z]{0,16}|[A-Z]{1,16} .*", re.DOTALL)  # could still be HTTP
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def response(status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
             *, close: bool = False, head: bool = False, allow: str = "") -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}"]
    if allow:
        lines.append(f"Allow: {allow}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


def _accept_of(head: bytes | bytearray) -> str:
    """The Accept header of a request head as `answer` reads it: the last one, "" if none."""
    accept = b""
    for raw in bytes(head).split(b"\n")[1:]:
        name, colon, value = raw.partition(b":")
        if colon and name.strip().lower() == b"accept":
            accept = value.strip()
    return accept.decode("latin-1")


class _HttpConn(Connection):
    server: MetricsServer
    answered = 0  # requests answered in this turn (MetricsServer.tick resets it)

    def process(self) -> None:
        while not self.closing and self.sock.fileno() >= 0 and self.inbuf:
            if self.answered >= REQUESTS_PER_TURN:
                self.backlogged = True  # the rest waits for the next turn
                break
            if len(self.outbuf) >= OUTPUT_HIGH_WATER:
                self.flush()
                if len(self.outbuf) >= OUTPUT_HIGH_WATER:
                    break  # pipelined requests wait until the client has read the replies
            first = self.inbuf.find(b"\n")
            line = bytes(self.inbuf[:first] if first >= 0 else self.inbuf[:4200])
            complete = first >= 0 or len(line) >= 4200
            if not (_REQUEST_LINE.fullmatch(line) if complete else _METHOD_SO_FAR.fullmatch(line)):
                self.server.log.debug("metrics %s: not an HTTP request, closing", self.peer)
                self.drop()
                return
            end = self.inbuf.find(b"\r\n\r\n")
            size = 4
            if end < 0:
                end, size = self.inbuf.find(b"\n\n"), 2
            if end < 0 and len(self.inbuf) <= MAX_REQUEST:
                return
            if end < 0 or end + size > MAX_REQUEST:
                self.reply(response(431, b"request head too large\n", close=True), True)
                break
            if not self.server.may_render(self.inbuf[:end]):
                self.backlogged = True  # this turn's renders are spent: the next turn
                break
            head = bytes(self.inbuf[:end])
            del self.inbuf[:end + size]
            self.answered += 1
            self.answer(head)
        self.flush()

    def answer(self, head: bytes) -> None:
        lines = head.split(b"\n")
        match = _REQUEST_LINE.fullmatch(lines[0])
        assert match is not None  # checked by process()
        method, target, minor = match.group(1), match.group(2), match.group(3)
        headers: dict[bytes, bytes] = {}
        for raw in lines[1:]:
            name, colon, value = raw.partition(b":")
            if not colon:
                self.reply(response(400, b"bad header line\n", close=True), True)
                return
            headers[name.strip().lower()] = value.strip()
        connection = headers.get(b"connection", b"").lower()
        close = connection == b"close" or (minor == b"0" and connection != b"keep-alive")
        if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
            self.reply(response(400, b"a scrape has no body\n", close=True), True)
            return
        if method not in (b"GET", b"HEAD"):
            self.reply(response(405, b"GET or HEAD\n", close=close, allow="GET, HEAD"), close)
            return
        head_only = method == b"HEAD"
        if target.split(b"?", 1)[0] != b"/metrics":
            self.reply(response(404, b"metrics are at /metrics\n", close=close,
                                head=head_only), close)
            return
        rendered = self.server.rendered(headers.get(b"accept", b"").decode("latin-1"))
        if rendered is None:
            self.reply(response(500, b"collecting the metrics failed\n", close=close), close)
            return
        body, content_type = rendered
        self.reply(response(200, body, content_type, close=close, head=head_only), close)

    def reply(self, data: bytes, close: bool) -> None:
        if close:
            self.closing = True
            self.inbuf.clear()
        self.queue(data)


class MetricsServer(StreamServer):
    """Serves `render`'s exposition on host:port (port 0: an ephemeral one, for tests)."""

    name = "metrics"
    refusal = response(503, b"too many connections\n", close=True)
    output_limit = 16 * OUTPUT_LIMIT  # one exposition may be large; see OUTPUT_HIGH_WATER

    def __init__(self, render: Render, selector: selectors.BaseSelector, *,
                 host: str = "127.0.0.1", port: int = 0, idle_timeout: float = IDLE_TIMEOUT,
                 log: logging.Logger | None = None,
                 release: Callable[[], None] | None = None) -> None:
        super().__init__(selector, max_connections=MAX_CONNECTIONS, idle_timeout=idle_timeout,
                         log=log or logging.getLogger("gearman_driver.metrics"))
        self.render = render
        self.release = release  # what `render` keeps open, closed with the server
        self.host = host
        self.port = port
        self._cache: dict[str, tuple[bytes, str]] = {}  # this turn's renders, by Accept
        self._renders_left = RENDERS_PER_TURN
        self._errors = 0  # failed renders not yet logged
        self._error_logged = float("-inf")

    def may_render(self, head: bytes | bytearray) -> bool:
        """Whether the request whose head this is can be answered this turn: every request
        may while a render is left; then only those whose Accept header was rendered."""
        if self._renders_left > 0:
            return True
        return _accept_of(head) in self._cache

    def rendered(self, accept: str) -> tuple[bytes, str] | None:
        """The exposition for `accept`, rendered at most once per turn; None if it failed
        (a bug in a collector costs the scrape, never the master, and its log line comes at
        most once a minute, whoever keeps asking)."""
        cached = self._cache.get(accept)
        if cached is not None:
            return cached
        self._renders_left -= 1
        try:
            cached = self._cache[accept] = self.render(accept)
        except Exception:
            self._errors += 1
            now = time.monotonic()
            if now - self._error_logged >= ERROR_LOG_EVERY:
                self.log.exception("metrics: collecting failed (%d times since the last "
                                   "such line)", self._errors)
                self._errors, self._error_logged = 0, now
            return None
        return cached

    def tick(self, now: float) -> None:
        """A new turn: forget the renders, renew the budgets, answer what was left over."""
        self._cache.clear()
        self._renders_left = RENDERS_PER_TURN
        for conn in list(self.conns):
            if isinstance(conn, _HttpConn):
                conn.answered = 0
                if conn.backlogged:
                    conn.resume()
        super().tick(now)

    def connection(self, sock: socket.socket, peer: str, now: float) -> Connection:
        return _HttpConn(self, sock, peer, now)

    def make_room(self, full: list[Connection]) -> bool:
        """Full: close the connection idle longest (a scraper between scrapes reconnects)."""
        idle = [conn for conn in full if not conn.outbuf]
        if not idle:
            return False
        oldest = min(idle, key=lambda conn: conn.last_active)
        self.log.info("metrics: %d connections open, closing the one idle longest (%s)",
                      len(self.conns), oldest.peer)
        oldest.drop()
        return True

    def close(self) -> None:
        super().close()
        if self.release is not None:
            self.release()

    def close_in_child(self) -> None:
        super().close_in_child()
        if self.release is not None:
            self.release()

    def open(self) -> None:
        """Bind and listen; CannotCreate (port in use, bad address) leaves nothing open."""
        self.swap_listeners(self.prepare(self.host, self.port))

    def prepare(self, host: str, port: int) -> list[Listener]:
        """The listener for host:port: the open one, or one bound now (not yet accepting);
        CannotCreate says why it cannot be, so that a reload is refused on it before it
        closes the working endpoint."""
        current = self.listener_at(("tcp", host, port))
        return [current] if current is not None else \
            [self.tcp_listener(host, port, "metrics_port")]

    def commit(self, listeners: list[Listener], host: str, port: int) -> None:
        """Serve on what `prepare` gave from now on; open connections go on."""
        self.host, self.port = host, port
        self.swap_listeners(listeners)
