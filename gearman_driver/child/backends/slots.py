"""The native backend for a job whose processes hold several jobs at once (`concurrency`).

One connection per server, as for a process of one slot: gearmand keeps a list of jobs per
worker connection, so one connection can hold every slot's job. Idle slots cost nothing per
submitted job: the process sleeps (PRE_SLEEP) on each connection and gearmand wakes it once
(NOOP), not once per slot as it would wake one connection per slot (docs/concurrency.md has
the figures of that thundering herd). Nothing is taken that no slot is free for: a GRAB_JOB_UNIQ
goes out only for a free slot, on one connection at a time. After a wake-up one grab goes out;
each job assigned doubles how many may be outstanding (up to the free slots), so a burst fills
200 slots in 8 round trips rather than 200, while a trickle costs a grab or two per job; a
NO_JOB brings it back to one, and once every grab of the round is answered the connection
sleeps.

The loop is asyncio's: the connections' sockets are watched through it (`LoopSelector`), an
`async def` method's jobs are its tasks, a plain method's jobs run on a pool of `concurrency`
threads. Every scoreboard write and every packet is the loop thread's; a thread's progress
packets (`send_status` ...) reach the loop through `call_soon_threadsafe`. A job's timeout is
enforced here, not by gearmand (its CAN_DO_TIMEOUT has one timer per connection): an async job
is cancelled and failed; a thread cannot be stopped, so its job is failed, the process takes
no new job, lets the others finish and exits (the master starts another). A stop (SIGTERM,
recycling, the master gone) takes no new job and finishes every job in hand.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from gearman_driver.child.backends.base import (
    BackendHooks,
    GearmanJob,
    JobResult,
    Server,
    WorkerBackend,
    drain_wakeup,
    payload_bytes,
)
from gearman_driver.child.backends.native_conn import (
    CONNECTING,
    GRABBING,
    READY,
    REGISTERING,
    SLEEPING,
    ConnectionSchedule,
    ServerConnection,
    echo_request,
    result_header,
)
from gearman_driver.keepalive import DEFAULT_KEEPALIVE
from gearman_driver.protocol import (
    DEFAULT_MAX_PACKET,
    JOB_PREFIX_MAX,
    OVERSIZE_JOB,
    Cmd,
    ProtocolError,
    encode_request,
)

log = logging.getLogger("gearman_driver.backends.slots")

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_GRAB = encode_request(Cmd.GRAB_JOB_UNIQ)
_PRE_SLEEP = encode_request(Cmd.PRE_SLEEP)
_WORK_FAIL, _WORK_COMPLETE, _WORK_EXCEPTION = (int(Cmd.WORK_FAIL), int(Cmd.WORK_COMPLETE),
                                               int(Cmd.WORK_EXCEPTION))


class SlotRunner(Protocol):
    """What the backend runs for one function (child/runner.py's SlotCall)."""

    function: str
    index: int
    is_async: bool
    timeout: float | None

    def run(self, job: GearmanJob) -> tuple[JobResult, str | None]: ...
    async def run_async(self, job: GearmanJob) -> tuple[JobResult, str | None]: ...
    def timed_out(self, job: GearmanJob) -> tuple[JobResult, str]: ...


class SlotBoard(Protocol):
    """The scoreboard writes of a process of several slots (scoreboard.SlotWriter's)."""

    def slot_started(self, handle: bytes = b"") -> float: ...
    def slot_finished(self, started: float, error: str | None = None,
                      function: int = 0) -> None: ...
    def slot_sent(self, delivered: bool) -> None: ...


class LoopSelector:
    """The selector calls a ServerConnection makes (register, modify, unregister), carried
    out on an asyncio loop: its sockets are then watched by the loop that runs the jobs."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 ready: Callable[[ServerConnection, int], None]) -> None:
        self._loop = loop
        self._ready = ready
        self._events: dict[int, int] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> None:
        self.modify(fileobj, events, data)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        before = self._events.get(fd, 0)
        if events & _READ and not before & _READ:
            self._loop.add_reader(fd, self._ready, data, _READ)
        elif before & _READ and not events & _READ:
            self._loop.remove_reader(fd)
        if events & _WRITE and not before & _WRITE:
            self._loop.add_writer(fd, self._ready, data, _WRITE)
        elif before & _WRITE and not events & _WRITE:
            self._loop.remove_writer(fd)
        self._events[fd] = events

    def unregister(self, fileobj: Any) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        events = self._events.pop(fd, 0)
        if events & _READ:
            self._loop.remove_reader(fd)
        if events & _WRITE:
            self._loop.remove_writer(fd)


@dataclass(eq=False)
class _InHand:
    """One job in a slot: where it came from (the connection, and which life of it), when it
    began, and whether its thread was abandoned past its timeout."""

    job: SlotJob
    runner: SlotRunner
    conn: ServerConnection
    life: int
    started: float
    abandoned: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    # the task or future running it: the loop holds tasks only weakly, and a pending task
    # nothing else refers to is collected mid-job ("Task was destroyed but it is pending")
    running: asyncio.Future[Any] | None = field(default=None, repr=False)


class SlotJob(GearmanJob):
    """A job in one slot; its progress packets go out on its connection, in order."""

    __slots__ = ("_backend", "_conn")

    def __init__(self, handle: bytes, unique: bytes, function: str, workload: bytes,
                 backend: SlotsBackend, conn: ServerConnection) -> None:
        super().__init__(handle, unique, function, workload)
        self._backend = backend
        self._conn = conn

    def _send(self, data: bytes) -> None:
        self._backend.send_from_anywhere(self._conn, data)

    def send_status(self, numerator: int, denominator: int) -> None:
        self._send(encode_request(Cmd.WORK_STATUS, self.handle, b"%d" % numerator,
                                  b"%d" % denominator))

    def send_data(self, data: bytes | str) -> None:
        self._send(encode_request(Cmd.WORK_DATA, self.handle, payload_bytes(data)))

    def send_warning(self, data: bytes | str) -> None:
        self._send(encode_request(Cmd.WORK_WARNING, self.handle, payload_bytes(data)))


class SlotsBackend(ConnectionSchedule):
    """The worker side for `concurrency` slots; see the module docstring."""

    name = "native"
    _log = log

    def __init__(self, servers: Sequence[Server], client_id: str,
                 runners: Mapping[str, SlotRunner], hooks: BackendHooks, *,
                 concurrency: int, board: SlotBoard,
                 after_job: Callable[[GearmanJob], None] | None = None,
                 max_backoff: float = 5.0, max_workload: int = DEFAULT_MAX_PACKET,
                 keepalive: float = DEFAULT_KEEPALIVE) -> None:
        self.servers = list(servers)
        self.keepalive = keepalive
        self.client_id = client_id
        self.runners = {name.encode(): runner for name, runner in runners.items()}
        self.hooks = hooks
        self.concurrency = concurrency
        self.board = board
        self.after_job = after_job
        self.max_backoff = max_backoff
        self.max_workload = max_workload
        self.max_packet = max_workload + JOB_PREFIX_MAX
        self.write_timeout = 60.0
        hello = [encode_request(Cmd.SET_CLIENT_ID, client_id.encode())] if client_id else []
        hello.append(encode_request(Cmd.RESET_ABILITIES))
        hello.extend(encode_request(Cmd.CAN_DO, name) for name in self.runners)
        self._hello = b"".join(hello)
        self._conns: list[ServerConnection] = []
        self._lives: dict[int, int] = {}  # id(conn) -> how many times it (re)connected
        self._ready: deque[ServerConnection] = deque()
        self._grabbing: ServerConnection | None = None  # the connection grabs went out on
        self._grabs = 0  # grabs outstanding on it
        self._window = 1  # how many may be (doubled by each job assigned, 1 after a NO_JOB)
        self._empty = False  # a NO_JOB came in this round: sleep once every grab is answered
        self._in_hand: set[_InHand] = set()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._pool: ThreadPoolExecutor | None = None
        self._done: asyncio.Future[None] | None = None

    # -- the loop ------------------------------------------------------------------------

    def forget_connections(self) -> None:
        for conn in self._conns:
            if conn.sock is not None:
                conn.sock.close()

    def run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.get_ident()
        self._done = loop.create_future()
        selector = LoopSelector(loop, self._service)
        self._conns = [
            ServerConnection(server, selector,  # type: ignore[arg-type]  # its 3 calls
                             max_backoff=self.max_backoff, max_packet=self.max_packet,
                             write_timeout=self.write_timeout, keepalive=self.keepalive)
            for server in self.servers
        ]
        if any(not runner.is_async for runner in self.runners.values()):
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="slot")
        if self.hooks.wakeup_fd is not None:
            loop.add_reader(self.hooks.wakeup_fd, self._on_signal)
        loop.call_soon(self._tick)
        try:
            loop.run_until_complete(self._done)
        finally:
            self._shutdown()

    def _on_signal(self) -> None:
        assert self.hooks.wakeup_fd is not None
        drain_wakeup(self.hooks.wakeup_fd)
        self._check_stop()

    def _tick(self) -> None:
        """Look at the stop flag, start due (re)connects, time out slow connects; again at
        the next due time or poll interval."""
        self._check_stop()
        assert self._loop is not None
        wait = self._connect_due(self.hooks.poll_interval)
        self._loop.call_later(max(wait, 0.001), self._tick)

    def _check_stop(self) -> None:
        if not self._stopping and self.hooks.should_stop():
            self._stop_taking("stop requested")
        self._maybe_done()

    def _stop_taking(self, why: str) -> None:
        """Take no new job; finish those in hand (an outstanding grab's answer is still
        taken: gearmand may assign a job to it, which then runs too)."""
        if not self._stopping:
            log.debug("taking no new job (%s); %d in hand", why, self._live_jobs())
        self._stopping = True

    def _maybe_done(self) -> None:
        if self._stopping and not self._live_jobs() and self._grabbing is None and \
                self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _live_jobs(self) -> int:
        return sum(1 for slot in self._in_hand if not slot.abandoned)

    # -- connections ---------------------------------------------------------------------

    def _service(self, conn: ServerConnection, mask: int) -> None:
        try:
            if conn.state == CONNECTING:
                if conn.finish_connect():
                    self._lives[id(conn)] = self._lives.get(id(conn), 0) + 1
                    conn.send(self._hello + echo_request(conn))
                return
            if mask & _WRITE:
                conn.flush_some()
            if mask & _READ and conn.sock is not None:
                for packet in conn.read():
                    self._handle(conn, packet[1], packet[2])
        except ProtocolError as exc:
            self._lost(conn, f"protocol error: {exc}", logging.ERROR)
        except OSError as exc:
            self._lost(conn, str(exc), logging.INFO)
        if conn.dead is not None:
            self._lost(conn, conn.dead, logging.INFO)

    def _lost(self, conn: ServerConnection, reason: str, level: int) -> None:
        if not self._drop(conn, reason, level):
            return
        if self._grabbing is conn:
            self._grabbing, self._grabs = None, 0
        self._grab_next()
        self._maybe_done()

    def _shutdown(self) -> None:
        for conn in self._conns:
            if conn.sock is not None and conn.state >= REGISTERING:
                conn.flush_blocking(5.0)
            conn.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._loop is not None:
            self._loop.close()

    # -- packets -------------------------------------------------------------------------

    def _handle(self, conn: ServerConnection, cmd: int, args: tuple[bytes, ...]) -> None:
        if cmd == Cmd.JOB_ASSIGN_UNIQ:
            self._assigned(conn, args[0], args[1], args[2], args[3])
        elif cmd == Cmd.JOB_ASSIGN:
            self._assigned(conn, args[0], args[1], b"", args[2])
        elif cmd == OVERSIZE_JOB:
            self._assigned(conn, args[0], args[1], b"", b"", oversize=int(args[2]))
        elif cmd == Cmd.NOOP:
            if conn.state == SLEEPING:
                conn.state = READY
                self._enqueue(conn)
                self._grab_next()
        elif cmd == Cmd.NO_JOB:
            self._window, self._empty = 1, True
            if not self._answered(conn):
                return  # more answers of this round to come
            if self._stopping:
                conn.state = READY
                self._maybe_done()
                return
            conn.state = SLEEPING
            conn.send(_PRE_SLEEP)
            self._grab_next()
        elif cmd == Cmd.ECHO_RES:
            if conn.state == REGISTERING and args[0] == conn.token:
                conn.state = READY
                conn.registered()
                log.info("registered %d functions with %s", len(self.runners), conn.label)
                self.hooks.on_registered(conn.server)
                self._enqueue(conn)
                self._grab_next()
        elif cmd == Cmd.ERROR:
            raise ProtocolError("server error: " + b": ".join(args).decode(errors="replace"))
        else:
            raise ProtocolError(f"unexpected packet {Cmd(cmd).name} for a worker")

    def _enqueue(self, conn: ServerConnection) -> None:
        if not conn.queued:
            conn.queued = True
            self._ready.append(conn)

    def _answered(self, conn: ServerConnection) -> bool:
        """One grab on `conn` was answered; True once every grab of its round was."""
        if self._grabbing is not conn:
            return True
        self._grabs -= 1
        if self._grabs > 0:
            return False
        self._grabbing = None
        return True

    def _grab_next(self) -> None:
        """Grabs for free slots only, on one connection at a time, as many as the window
        allows (see the module docstring)."""
        if self._stopping or self.hooks.should_stop():  # a stop may be in this very wake-up
            return
        free = self.concurrency - len(self._in_hand) - self._grabs
        if self._grabbing is not None:  # top the round up after a job was assigned
            conn = self._grabbing
            more = min(free, self._window - self._grabs)
            if more > 0 and not self._empty and conn.dead is None and conn.sock is not None:
                self._grabs += more
                conn.send(_GRAB * more)
            return
        while free > 0 and self._ready:
            conn = self._ready.popleft()
            conn.queued = False
            if conn.state == READY and conn.dead is None and conn.sock is not None:
                conn.state = GRABBING
                self._grabbing, self._empty = conn, False
                self._grabs = min(free, self._window)
                conn.send(_GRAB * self._grabs)
                return

    # -- jobs ----------------------------------------------------------------------------

    def _assigned(self, conn: ServerConnection, handle: bytes, function: bytes, unique: bytes,
                  workload: bytes, oversize: int = 0) -> None:
        self._window = min(self._window * 2, self.concurrency)
        if self._answered(conn):
            conn.state = READY
            self._enqueue(conn)  # it has work: ask it again as soon as a slot is free
        runner = self.runners.get(function)
        if oversize or len(workload) > self.max_workload or runner is None:
            if runner is None:
                log.error("%s assigned unregistered function %r; failing it", conn.label,
                          function)
            else:
                log.error("job %s (handle %s): workload of %d bytes exceeds max_workload_mb "
                          "(%d bytes); failing it without running it",
                          function.decode("utf-8", "replace"), handle.decode("ascii", "replace"),
                          oversize or len(workload), self.max_workload)
            conn.send(encode_request(Cmd.WORK_FAIL, handle))
            self._grab_next()
            return
        job = SlotJob(handle, unique, runner.function, workload, self, conn)
        slot = _InHand(job, runner, conn, self._lives.get(id(conn), 0),
                       self.board.slot_started(handle))
        self._in_hand.add(slot)
        assert self._loop is not None
        if runner.is_async:
            slot.running = self._loop.create_task(runner.run_async(job))
        else:
            assert self._pool is not None
            slot.running = self._loop.run_in_executor(self._pool, runner.run, job)
            if runner.timeout:
                slot.timer = self._loop.call_later(runner.timeout, self._thread_timed_out, slot)
        slot.running.add_done_callback(lambda done: self._on_done(slot, done))
        self._grab_next()

    def _on_done(self, slot: _InHand, done: asyncio.Future[Any]) -> None:
        if done.cancelled():  # only at shutdown: the pool's queued work is dropped
            self._in_hand.discard(slot)
            return
        self._finished(slot, *done.result())

    def _thread_timed_out(self, slot: _InHand) -> None:
        """A thread's job ran past its timeout: fail it now; the thread cannot be stopped, so
        the process takes no new job, lets the others finish and exits."""
        if slot not in self._in_hand or slot.abandoned:
            return
        result, error = slot.runner.timed_out(slot.job)
        self._finished(slot, result, error)
        slot.abandoned = True
        self._in_hand.add(slot)  # it still holds a thread, not a slot: not waited for
        self._stop_taking("a thread's job ran past its timeout")
        self._maybe_done()

    def _finished(self, slot: _InHand, result: JobResult, error: str | None) -> None:
        """A slot's job is over: count it, send its result on the connection it came from
        (if that connection still lives), free the slot, grab again."""
        if slot.abandoned:  # its thread ended after the timeout failed it
            self._in_hand.discard(slot)
            self._maybe_done()
            return
        if slot.timer is not None:
            slot.timer.cancel()
        self.board.slot_finished(slot.started, error, slot.runner.index)
        if self.after_job is not None:
            self.after_job(slot.job)
        conn = slot.conn
        alive = conn.sock is not None and conn.dead is None and \
            self._lives.get(id(conn), 0) == slot.life and conn.state >= READY
        if alive:
            conn.send_parts(_result_packet(slot.job.handle, result))
        delivered = alive and conn.dead is None
        if not delivered:  # each of the connection's jobs: gearmand re-queues them all
            WorkerBackend.result_lost(conn.server, slot.job.handle, slot.job.function,
                                      conn.dead or "connection closed")
        self._in_hand.discard(slot)
        self.board.slot_sent(delivered)
        if conn.dead is not None:
            self._lost(conn, conn.dead, logging.INFO)
        if not self._stopping and self.hooks.should_stop():
            self._stop_taking("stop requested")
        self._grab_next()
        self._maybe_done()

    def send_from_anywhere(self, conn: ServerConnection, data: bytes) -> None:
        """A progress packet of a job, from the loop (an async job) or from a thread."""
        if threading.get_ident() == self._loop_thread:
            conn.send(data)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(conn.send, data)


def _result_packet(handle: bytes, result: JobResult) -> list[bytes]:
    status, data = result
    if status == "fail":
        return [encode_request(_WORK_FAIL, handle)]
    cmd = _WORK_COMPLETE if status == "complete" else _WORK_EXCEPTION
    return [result_header(cmd, handle, len(data)), data]
