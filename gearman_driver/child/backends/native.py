"""Our own worker side of the Gearman binary protocol: one selector, every server, one job.

Why not pygearman: its loop tops out near 10k jobs/s and needs care around stopping and
reconnecting (see docs/architecture.md, Backends). This loop sleeps (PRE_SLEEP) on every
connection, wakes on a NOOP from any, keeps at most one GRAB_JOB_UNIQ outstanding so the
process never holds more than the job it runs, and pipelines each result with the next grab
in one send. The worker's state machine (packets, jobs, results, and with one server the
fused job path) is in native_jobs.py; this module runs the loop and the connections' lives.
"""

from __future__ import annotations

import logging
import selectors
import time

from gearman_driver.child.backends.base import drain_wakeup
from gearman_driver.child.backends.native_conn import (
    CONNECTING,
    REGISTERING,
    ConnectionSchedule,
    ServerConnection,
    echo_request,
)
from gearman_driver.child.backends.native_jobs import ServerError, WorkerProtocol
from gearman_driver.protocol import ProtocolError

log = logging.getLogger("gearman_driver.backends.native")

_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE


class NativeBackend(WorkerProtocol, ConnectionSchedule):
    """The worker loop over our codec (gearman_driver.protocol); see the module docstring.

    Results: "complete" -> WORK_COMPLETE; "fail" -> WORK_FAIL; "exception" (jobs that opted
    in) -> WORK_EXCEPTION alone. gearmand 1.1.20 ends the job on WORK_EXCEPTION and passes
    clients without exceptions enabled a malformed WORK_FAIL that several clients choke on; a
    WORK_FAIL after it would earn an ERROR JOB_NOT_FOUND (docs/protocol.md).

    Hooks: on_registered(server) after the ECHO round trip that follows the CAN_DOs, on every
    (re)connect; on_disconnected(server) only for a connection that had been registered, so
    the two pair up. A lost connection or a failed connect is logged once per process at INFO,
    then at DEBUG while it lasts (the master logs the one WARNING for a server that is down;
    a connection of each of hundreds of processes is not worth one each). Protocol and
    server errors are logged at ERROR. Host names are resolved (blocking) at each connect
    attempt: prefer IP addresses.
    """

    name = "native"
    _log = log

    def forget_connections(self) -> None:
        for conn in self._conns:
            if conn.sock is not None:
                conn.sock.close()

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        hooks = self.hooks
        sel = selectors.DefaultSelector()
        self._conns = [
            ServerConnection(
                server, sel, max_backoff=self.max_backoff, max_packet=self.max_packet,
                write_timeout=self.write_timeout, keepalive=self.keepalive,
            )
            for server in self.servers
        ]
        if hooks.wakeup_fd is not None:
            sel.register(hooks.wakeup_fd, _EVENT_READ, None)  # a signal: look at should_stop
        self._ready.clear()
        self._grabbing = None
        self._stopping = False
        stop_by = 0.0
        try:
            while True:
                if not self._stopping and hooks.should_stop():
                    self._stopping = True
                    stop_by = time.monotonic() + self.stop_grace
                if self._stopping and (self._grabbing is None or time.monotonic() > stop_by):
                    return
                due = self._grabbing
                if due is not None and due.blocking and not due.out:
                    # a reply is due on a blocking socket (one server): recv, no select
                    if due.parser.buffered or due.parser.skipping:
                        self._service(due, _EVENT_READ)  # the rest of a packet
                    else:
                        self._jobs_in_a_row(due)
                else:
                    for key, mask in sel.select(self._connect_due(hooks.poll_interval)):
                        conn: ServerConnection | None = key.data
                        if conn is None:
                            drain_wakeup(key.fd)
                        elif conn.sock is not None:  # else closed earlier in this batch
                            self._service(conn, mask)
                for conn in self._conns:
                    if conn.dead is not None:
                        self._lost(conn, conn.dead, logging.INFO)
        finally:
            self._shutdown(sel)

    def _service(self, conn: ServerConnection, mask: int, data: bytes | None = None) -> None:
        """The connection is ready for `mask`: finish a connect, write, read and handle
        (`data`: what a recv already got, instead of reading)."""
        try:
            if conn.state == CONNECTING:
                if conn.finish_connect():
                    conn.send(self._hello + echo_request(conn))
                return
            if mask & _EVENT_WRITE:
                conn.flush_some()
            if mask & _EVENT_READ:
                for packet in conn.read(data):
                    self._handle(conn, packet[1], packet[2])
        except ProtocolError as exc:
            self._lost(conn, f"protocol error: {exc}", logging.ERROR)
        except ServerError as exc:
            self._lost(conn, f"server error: {exc}", logging.ERROR)
        except OSError as exc:
            self._lost(conn, str(exc), logging.INFO)

    # -- failures ------------------------------------------------------------------------

    def _lost(self, conn: ServerConnection, reason: str, level: int) -> None:
        """Close, report and schedule a reconnect; the other servers carry on."""
        if not self._drop(conn, reason, level):
            return
        if self._grabbing is conn:
            self._grabbing = None
        self._grab_next()

    def _shutdown(self, sel: selectors.BaseSelector) -> None:
        """Deliver what is still buffered (the last result), then close everything."""
        for conn in self._conns:
            if conn.sock is not None and conn.state >= REGISTERING:
                conn.flush_blocking(5.0)
            conn.close()
        self._conns = []
        self._ready.clear()
        self._grabbing = None
        sel.close()

