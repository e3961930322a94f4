"""The native backend's worker state machine: what each packet and each job does.

Register (ECHO round trip after the CAN_DOs), grab, sleep (PRE_SLEEP) and wake (NOOP), run
the job in hand, and send its result pipelined with the next grab; with one server, jobs
that follow each other run in one fused function (`_jobs_in_a_row`). The loop, the
connects and the losses are native.py's; both halves make one NativeBackend.
"""

from __future__ import annotations

import abc
import logging
import selectors
from collections import deque
from collections.abc import Mapping, Sequence

from gearman_driver.child.backends.base import (
    BackendHooks,
    JobResult,
    JobRunner,
    Server,
    WorkerBackend,
)
from gearman_driver.child.backends.native_conn import (
    GRABBING,
    READY,
    RECV_MIN,
    REGISTERING,
    SLEEPING,
    NativeJob,
    ServerConnection,
    result_header,
)
from gearman_driver.keepalive import DEFAULT_KEEPALIVE
from gearman_driver.protocol import (
    DEFAULT_MAX_PACKET,
    HEADER,
    HEADER_SIZE,
    JOB_PREFIX_MAX,
    OVERSIZE_JOB,
    REQ,
    RES,
    Cmd,
    ProtocolError,
    encode_request,
)

log = logging.getLogger("gearman_driver.backends.native")

_GRAB = encode_request(Cmd.GRAB_JOB_UNIQ)
_PRE_SLEEP = encode_request(Cmd.PRE_SLEEP)
_JOB_ASSIGN_UNIQ = int(Cmd.JOB_ASSIGN_UNIQ)
_JOB_ASSIGN = int(Cmd.JOB_ASSIGN)
_NO_JOB = int(Cmd.NO_JOB)
_NOOP = int(Cmd.NOOP)
_ECHO_RES = int(Cmd.ECHO_RES)
_ERROR = int(Cmd.ERROR)
_WORK_COMPLETE = int(Cmd.WORK_COMPLETE)
_WORK_EXCEPTION = int(Cmd.WORK_EXCEPTION)
_WORK_FAIL = int(Cmd.WORK_FAIL)
#: With one server, a reply that is due (after GRAB_JOB_UNIQ) is awaited by a blocking recv
#: bounded by this; a signal arriving meanwhile is looked at no later than that.
REPLY_WAIT = 0.1
#: A result below this goes out joined with its header and the next grab in one buffer.
_SMALL = 65536
_PACK_HEADER = HEADER.pack
_UNPACK_HEADER = HEADER.unpack_from
_EVENT_READ = selectors.EVENT_READ


class ServerError(Exception):
    """gearmand sent an ERROR packet: the connection's state is unknown, so start afresh."""


class WorkerProtocol(WorkerBackend):
    """The packet and job half of NativeBackend (see the module docstring)."""

    def __init__(
        self,
        servers: Sequence[Server],
        client_id: str,
        functions: Mapping[str, JobRunner],
        hooks: BackendHooks,
        *,
        max_backoff: float = 5.0,
        max_workload: int = DEFAULT_MAX_PACKET,
        keepalive: float = DEFAULT_KEEPALIVE,
    ) -> None:
        super().__init__(servers, client_id, functions, hooks, max_backoff=max_backoff,
                         max_workload=max_workload, keepalive=keepalive)
        self.max_packet = self.max_workload + JOB_PREFIX_MAX  # larger jobs are read past
        self.write_timeout = 60.0  # a server that reads nothing for this long is dead
        self.stop_grace = 2.0  # how long a stop waits for the answer to an outstanding grab
        hello = [encode_request(Cmd.SET_CLIENT_ID, client_id.encode())] if client_id else []
        hello.append(encode_request(Cmd.RESET_ABILITIES))
        hello.extend(encode_request(Cmd.CAN_DO, name) for name in self.runners)
        self._hello = b"".join(hello)
        self._conns: list[ServerConnection] = []
        self._ready: deque[ServerConnection] = deque()
        self._grabbing: ServerConnection | None = None
        self._stopping = False

    @abc.abstractmethod
    def _service(self, conn: ServerConnection, mask: int, data: bytes | None = None) -> None:
        """Read (or take `data`), handle what arrived; a failure closes the connection."""

    @abc.abstractmethod
    def _lost(self, conn: ServerConnection, reason: str, level: int) -> None:
        """Close, report and schedule a reconnect."""

    # -- packets -------------------------------------------------------------------------

    def _handle(self, conn: ServerConnection, cmd: int, args: tuple[bytes, ...]) -> None:
        if cmd == _JOB_ASSIGN_UNIQ:
            self._run_job(conn, args[0], args[1], args[2], args[3])
        elif cmd == _NOOP:
            if conn.state == SLEEPING:
                conn.state = READY
                self._enqueue(conn)
                self._grab_next()
        elif cmd == _NO_JOB:
            if self._grabbing is conn:
                self._grabbing = None
            if self._stopping:
                conn.state = READY
                return
            conn.state = SLEEPING
            conn.send(_PRE_SLEEP)
            self._grab_next()
        elif cmd == _ECHO_RES:
            if conn.state == REGISTERING and args[0] == conn.token:
                conn.state = READY
                conn.registered()
                if len(self._conns) == 1:  # nothing else to watch while a reply is due
                    conn.block_reads(REPLY_WAIT)
                log.info("registered %d functions with %s", len(self.runners), conn.label)
                self.hooks.on_registered(conn.server)
                self._enqueue(conn)
                self._grab_next()
        elif cmd == _ERROR:
            raise ServerError(b": ".join(args).decode(errors="replace"))
        elif cmd == _JOB_ASSIGN:
            self._run_job(conn, args[0], args[1], b"", args[2])
        elif cmd == OVERSIZE_JOB:  # the parser read past its workload
            self._refuse(conn, args[0], args[1], int(args[2]))
        else:
            raise ProtocolError(f"unexpected packet {Cmd(cmd).name} for a worker")

    def _run_job(
        self, conn: ServerConnection, handle: bytes, function: bytes, unique: bytes,
        workload: bytes,
    ) -> None:
        """Run the job in hand and send its result, pipelined with the next grab if we go on."""
        if self._grabbing is conn:
            self._grabbing = None
        conn.state = READY
        if len(workload) > self.max_workload:
            self._refuse(conn, handle, function, len(workload))
            return
        entry = self.runners.get(function)
        if entry is None:
            log.error("%s assigned unregistered function %r; failing it", conn.label, function)
            self._send_result(conn, handle, JobResult("fail"))
            return
        name = entry[0]
        self._job_done(conn, handle, name, entry[1](NativeJob(handle, unique, name, workload,
                                                              conn)))

    def _job_done(self, conn: ServerConnection, handle: bytes, function: str,
                  result: JobResult) -> None:
        """Send a job's result (with the next grab if we go on), then mark it sent."""
        self._send_result(conn, handle, result)
        if conn.out and conn.dead is None:  # a large result: it is ours until it is out
            conn.flush_blocking(conn.write_timeout)
        delivered = conn.dead is None and conn.sock is not None
        if not delivered:
            self.result_lost(conn.server, handle, function, conn.dead or "connection closed")
        self.hooks.on_result_sent(delivered)

    def _refuse(self, conn: ServerConnection, handle: bytes, function: bytes, size: int) -> None:
        """A job over max_workload: WORK_FAIL without running it; the connection stays."""
        if self._grabbing is conn:
            self._grabbing = None
        conn.state = READY
        self.refuse_oversize(handle, function, size)
        self._send_result(conn, handle, JobResult("fail"))

    def _send_result(self, conn: ServerConnection, handle: bytes, result: JobResult) -> None:
        """Send the result, pipelined with the next grab if we go on."""
        status, data = result
        if status == "fail":
            parts = [encode_request(_WORK_FAIL, handle)]
        else:  # complete, or exception for a job that opted in
            if type(data) is not bytes:
                data = data.encode() if isinstance(data, str) else bytes(data)
            cmd = _WORK_COMPLETE if status == "complete" else _WORK_EXCEPTION
            parts = [result_header(cmd, handle, len(data)), data]
        if self._stopping or self.hooks.should_stop():
            self._stopping = True
            conn.send_parts(parts)
        elif self._grabbing is None and not self._ready:
            parts.append(_GRAB)
            conn.send_parts(parts)
            conn.state = GRABBING
            self._grabbing = conn
        else:  # another server woke us meanwhile: take turns
            conn.send_parts(parts)
            self._enqueue(conn)
            self._grab_next()

    def _enqueue(self, conn: ServerConnection) -> None:
        if not conn.queued:
            conn.queued = True
            self._ready.append(conn)

    def _grab_next(self) -> None:
        """Send GRAB_JOB_UNIQ on the next awake connection, if none is outstanding and no
        stop was asked for: a stop signal handled in the same wake-up as a NOOP (the loop has
        not looked at the flag yet) must not take one more job."""
        if self._grabbing is not None or self._stopping or self.hooks.should_stop():
            return
        ready = self._ready
        while ready:
            conn = ready.popleft()
            conn.queued = False
            if conn.state == READY and conn.dead is None:
                conn.state = GRABBING
                self._grabbing = conn
                conn.send(_GRAB)
                return

    def _jobs_in_a_row(self, conn: ServerConnection) -> None:
        """The job path of a single server, fused into one function while jobs keep coming.

        A reply to our GRAB_JOB_UNIQ is due on a blocking socket (one server, nothing
        buffered either way). One recv (bounded by REPLY_WAIT); a lone whole JOB_ASSIGN_UNIQ
        is split in place, run, and its WORK_COMPLETE goes out with the next grab in one send;
        the result-sent mark follows while gearmand handles the grab. Anything else (NO_JOB,
        a partial or several packets, EOF, an unknown function, an oversize workload, a
        failed or large result, a progress packet that failed or is still buffered, a stop
        request) goes the general way, and back to run().
        """
        assert conn.sock is not None
        recv, send = conn.sock.recv, conn.sock.send
        runners = self.runners
        should_stop, result_sent = self.hooks.should_stop, self.hooks.on_result_sent
        max_packet, max_workload = self.max_packet, self.max_workload
        while True:
            try:
                data = recv(RECV_MIN)
            except (BlockingIOError, InterruptedError):
                return  # REPLY_WAIT passed: run() looks at should_stop
            except OSError as exc:
                self._lost(conn, str(exc), logging.INFO)
                return
            size = len(data)
            if size <= HEADER_SIZE:
                break
            magic, cmd, length = _UNPACK_HEADER(data)
            if cmd != _JOB_ASSIGN_UNIQ or magic != RES or length != size - HEADER_SIZE or \
                    length > max_packet:
                break
            args = data[HEADER_SIZE:].split(b"\0", 3)
            if len(args) != 4:
                break
            handle, function, unique, workload = args
            entry = runners.get(function)
            if entry is None or len(workload) > max_workload:
                self._run_job(conn, handle, function, unique, workload)
                return
            status, result = entry[1](NativeJob(handle, unique, entry[0], workload, conn))
            if status != "complete" or type(result) is not bytes or len(result) >= _SMALL \
                    or conn.out or conn.dead is not None or should_stop():
                # (a progress packet of the job may have failed or stalled: nothing may pass it)
                self._grabbing = None
                conn.state = READY
                self._job_done(conn, handle, entry[0], JobResult(status, result))
                return
            reply = b"".join((_PACK_HEADER(REQ, _WORK_COMPLETE, len(handle) + 1 + len(result)),
                              handle, b"\0", result, _GRAB))
            try:
                sent = send(reply)
            except BlockingIOError:  # nothing went out within REPLY_WAIT
                sent = 0
            except OSError as exc:
                conn.dead = f"write failed: {exc}"
                self.result_lost(conn.server, handle, entry[0], conn.dead)
                result_sent(False)
                return
            if sent != len(reply):  # gearmand reads slowly: the rest is ours until it is out
                conn.out += memoryview(reply)[sent:]
                conn.flush_blocking(conn.write_timeout)
                if conn.dead is not None:
                    self.result_lost(conn.server, handle, entry[0], conn.dead)
                result_sent(conn.dead is None)
                return
            result_sent(True)
        self._service(conn, _EVENT_READ, data)
