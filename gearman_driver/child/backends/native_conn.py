"""One non-blocking connection to one gearmand, for the native backend.

Kept apart from the event loop (native.py) so the loop reads as the worker's state machine
and this file holds the socket chores: the connect (connecting.py's `Connector`, one address
after the other, never blocking, keepalive set on every socket) and the reconnect schedule
(`Backoff`), buffered writes that never raise (a write error marks the connection dead and
the loop reaps it), and reads through the strict parser.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import selectors
import socket
import struct
import time

from gearman_driver.child.backends.base import (
    BackendHooks,
    GearmanJob,
    Server,
    payload_bytes,
)
from gearman_driver.child.backends.connecting import Backoff, Connector
from gearman_driver.protocol import (
    HEADER,
    REQ,
    Cmd,
    Packet,
    PacketParser,
    ProtocolError,
    encode_request,
)

# Connection states.
DOWN = 0  # no socket; waiting for backoff.retry_at
CONNECTING = 1  # non-blocking connect in progress
REGISTERING = 2  # client id, abilities and ECHO_REQ sent; waiting for ECHO_RES
READY = 3  # registered and awake: needs a GRAB_JOB_UNIQ
GRABBING = 4  # GRAB_JOB_UNIQ sent; waiting for JOB_ASSIGN_UNIQ or NO_JOB
SLEEPING = 5  # PRE_SLEEP sent; waiting for NOOP

RECV_MIN = 65536
RECV_MAX = 16 * 1024 * 1024
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class ServerConnection:
    """Socket, parser, output buffer and reconnect schedule for one server."""

    __slots__ = (
        "server", "sel", "sock", "parser", "out", "state", "dead", "queued", "token",
        "max_packet", "write_timeout", "_want_write", "connector", "backoff", "blocking",
    )

    def __init__(
        self,
        server: Server,
        sel: selectors.BaseSelector,
        *,
        max_backoff: float,
        max_packet: int,
        write_timeout: float,
        keepalive: float,
    ) -> None:
        self.server = server
        self.sel = sel
        self.sock: socket.socket | None = None
        self.parser = PacketParser(max_size=max_packet, drop_oversize_jobs=True)
        self.out = bytearray()  # reused for every partial write
        self.state = DOWN
        self.dead: str | None = None  # set by a failed write; the loop closes the connection
        self.queued = False  # in the backend's ready queue
        self.token = b""
        self.max_packet = max_packet
        self.write_timeout = write_timeout
        self._want_write = False
        self.connector = Connector(server, keepalive)
        self.backoff = Backoff(max_backoff)
        self.blocking = False  # see block_reads

    @property
    def label(self) -> str:
        return f"{self.server[0]}:{self.server[1]}"

    @property
    def due(self) -> float | None:
        """When the loop must act by itself: retry a connection that is down, or leave an
        address that has not answered for the next one; None when neither applies."""
        if self.state == DOWN:
            return self.backoff.retry_at
        if self.state == CONNECTING:
            return self.connector.deadline
        return None

    def start_connect(self) -> None:
        """Begin a non-blocking connect (completion is signalled by writability). OSError
        when no address could even be tried."""
        self.state = CONNECTING
        self.connector.begin()
        self._adopt()

    def finish_connect(self) -> bool:
        """Writable while connecting: True once connected (now reading); False when this
        address failed and the next one is being tried; OSError when every address failed."""
        self._unregister()
        try:
            connected = self.connector.check()
        finally:
            self.sock = None
        if not connected:
            self._adopt()
            return False
        self.sock = self.connector.take()
        self.state = REGISTERING
        self._want_write = False
        self.sel.register(self.sock, _READ, self)
        return True

    def connect_timed_out(self) -> None:
        """The connect in progress passed its deadline: go on with the next address."""
        self._unregister()
        self.sock = None
        self.connector.timed_out()
        self._adopt()

    def _adopt(self) -> None:
        """Watch the connector's socket (a new address) for the end of its connect."""
        sock = self.connector.sock
        assert sock is not None
        self.sock = sock
        self.parser = PacketParser(max_size=self.max_packet, drop_oversize_jobs=True)
        self.out.clear()
        self.dead = None
        self._want_write = True
        self.sel.register(sock, _READ | _WRITE, self)

    def _unregister(self) -> None:
        if self.sock is not None:
            try:
                self.sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass

    def close(self) -> bool:
        """Drop the socket; True if it was registered (so on_disconnected pairs with
        on_registered, and a peer that accepts then hangs up is not reported every retry)."""
        was_up = self.state >= READY
        self._unregister()
        if self.sock is not None and self.sock is not self.connector.sock:
            self.sock.close()
        self.sock = None
        self.connector.close()
        self.blocking = False
        self.out.clear()
        self.state = DOWN
        return was_up

    def schedule_retry(self, now: float) -> None:
        """Next attempt after the current backoff step."""
        self.backoff.failed(now)

    def block_reads(self, timeout: float) -> None:
        """Make the socket blocking, with kernel time-outs (SO_RCVTIMEO/SO_SNDTIMEO): a reply
        that is due can then be awaited by one recv instead of a selector call and a recv.
        A recv or send never blocks longer than `timeout`; the selector still works on it."""
        assert self.sock is not None
        whole = int(timeout)
        limit = struct.pack("@ll", whole, int((timeout - whole) * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        self.sock.setblocking(True)
        self.blocking = True

    def registered(self) -> None:
        self.backoff.reset()

    # -- reading -----------------------------------------------------------------------

    def read(self, data: bytes | None = None) -> list[Packet]:
        """Packets from one recv (or from `data`, what a recv of the caller's got); raises
        ConnectionError on EOF, ProtocolError on garbage."""
        assert self.sock is not None
        parser = self.parser
        if data is None:
            if parser.skipping:  # an oversize job's workload: read it in big gulps, drop it
                size = min(max(parser.skipping, RECV_MIN), RECV_MAX)
            elif parser.buffered:
                size = min(max(parser.wanted, RECV_MIN), RECV_MAX)
            else:
                size = RECV_MIN
            try:
                data = self.sock.recv(size)
            except (BlockingIOError, InterruptedError):
                return []
        if not data:
            if parser.buffered:
                raise ProtocolError(f"truncated packet: closed after {parser.buffered} bytes")
            raise ConnectionError("connection closed by server")
        return parser.feed(data)

    # -- writing: never raises; a failure sets `dead` ----------------------------------

    def send(self, data: bytes) -> None:
        """Queue and try to write `data` now; the selector finishes a partial write."""
        self.send_parts([data])

    def send_parts(self, parts: list[bytes]) -> None:
        """Write several buffers with one sendmsg (no copy of a large result)."""
        if self.sock is None or self.dead is not None:
            return
        out = self.out
        if out:
            for part in parts:
                out += part
            return
        try:
            if sum(map(len, parts)) < 65536:
                data = b"".join(parts)  # small: one copy is cheaper than an iovec
                sent = self.sock.send(data)
                if sent == len(data):
                    return  # the job path: all out at once
                parts = [data]
            else:
                sent = self.sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.dead = f"write failed: {exc}"
            return
        for part in parts:
            size = len(part)
            if sent >= size:
                sent -= size
                continue
            out += memoryview(part)[sent:]
            sent = 0
        if out:
            self._set_write(True)

    def flush_some(self) -> None:
        """Called when writable: push out what is buffered."""
        if self.sock is None or self.dead is not None:
            return
        out = self.out
        if out:
            try:
                sent = self.sock.send(out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.dead = f"write failed: {exc}"
                return
            del out[:sent]  # O(1) at the front of a bytearray
        if not out:
            self._set_write(False)

    def send_now(self, data: bytes, timeout: float | None = None) -> None:
        """Write `data` and everything before it before returning (WORK_STATUS/DATA/WARNING).

        Blocks up to `timeout` (default: write_timeout) without progress; a peer that stops
        reading for that long is declared dead rather than hanging the job forever.
        """
        self.send(data)
        self.flush_blocking(self.write_timeout if timeout is None else timeout)

    def flush_blocking(self, timeout: float) -> None:
        sock = self.sock
        if sock is None or self.dead is not None or not self.out:
            return
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLOUT)
        deadline = time.monotonic() + timeout
        while self.out and self.dead is None:
            self.flush_some()
            if not self.out or self.dead is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self.dead = f"write stalled for {timeout:.0f} s"
                break
            if poller.poll(left * 1000):
                deadline = time.monotonic() + timeout  # progress possible: restart the clock

    def _set_write(self, on: bool) -> None:
        if on != self._want_write and self.sock is not None:
            self._want_write = on
            self.sel.modify(self.sock, _READ | _WRITE if on else _READ, self)


class ConnectionSchedule:
    """What both native loops (native.py's, and slots.py's on asyncio) do with their
    connections' lives: start the reconnects that are due, leave an address that does not
    answer for the next one, and retry a failed connect with backoff, said once."""

    _conns: list[ServerConnection]
    _log: logging.Logger
    hooks: BackendHooks

    def _connect_due(self, poll_interval: float) -> float:
        """Start the reconnects that are due and move connects that took too long on to the
        next address; return how long the loop may sleep."""
        timeout = poll_interval
        now = 0.0
        for conn in self._conns:
            due = conn.due
            if due is None:
                continue
            now = now or time.monotonic()
            if due <= now:
                try:
                    if conn.state == DOWN:
                        conn.start_connect()
                    else:
                        conn.connect_timed_out()
                except OSError as exc:
                    self._failed(conn, str(exc))
                now = time.monotonic()
                due = conn.due
            if due is not None:
                timeout = min(timeout, max(due - now, 0.0))
        return timeout

    def _drop(self, conn: ServerConnection, reason: str, level: int) -> bool:
        """A connection failed: close it, say why, schedule its reconnect, tell the hooks if
        it had been registered; False when there was nothing to close (the loop's own state
        about it is the caller's)."""
        if conn.state == CONNECTING:  # every address failed (the socket may be gone already)
            self._failed(conn, reason)
            return False
        if conn.sock is None:
            return False
        self._log.log(level, "closing connection to %s: %s", conn.label, reason)
        was_up = conn.close()
        conn.dead = None
        conn.schedule_retry(time.monotonic())
        if was_up:
            self.hooks.on_disconnected(conn.server)
        return True

    def _failed(self, conn: ServerConnection, reason: str) -> None:
        """A connect attempt failed: say so once, then quietly retry with backoff."""
        conn.close()
        conn.dead = None
        level = logging.INFO if conn.backoff.failures == 0 else logging.DEBUG
        self._log.log(level, "cannot connect to %s: %s (retrying with backoff)", conn.label,
                      reason)
        conn.schedule_retry(time.monotonic())


_echoes = itertools.count(1)


def echo_request(conn: ServerConnection) -> bytes:
    """The ECHO_REQ that follows the CAN_DOs: its answer proves gearmand processed them; the
    token (unique in this process) is kept on the connection to recognise that answer."""
    conn.token = b"gearman-driver:%d:%d" % (os.getpid(), next(_echoes))
    return encode_request(Cmd.ECHO_REQ, conn.token)


def result_header(cmd: int, handle: bytes, size: int) -> bytes:
    """Header + handle + NUL of a two-argument work packet whose last argument is `size` bytes."""
    return HEADER.pack(REQ, cmd, len(handle) + 1 + size) + handle + b"\0"


class NativeJob(GearmanJob):
    """A job taken on one connection; progress packets go out on that connection at once."""

    __slots__ = ("_conn",)

    def __init__(
        self, handle: bytes, unique: bytes, function: str, workload: bytes, conn: ServerConnection
    ) -> None:
        # GearmanJob's fields set here rather than through super(): one call less per job
        self.handle = handle
        self.unique = unique
        self.function = function
        self.workload = workload
        self._conn = conn

    def send_status(self, numerator: int, denominator: int) -> None:
        self._conn.send_now(
            encode_request(
                Cmd.WORK_STATUS, self.handle, b"%d" % numerator, b"%d" % denominator
            )
        )

    def send_data(self, data: bytes | str) -> None:
        self._conn.send_now(encode_request(Cmd.WORK_DATA, self.handle, payload_bytes(data)))

    def send_warning(self, data: bytes | str) -> None:
        self._conn.send_now(encode_request(Cmd.WORK_WARNING, self.handle, payload_bytes(data)))
