"""The narrow seam between a child process and a Gearman worker library.

A backend knows the worker side of the Gearman protocol and nothing of gearman-driver:
it connects to every server, registers the functions it is given, takes one job at a time,
hands it to a runner and sends back what the runner returns. Everything about user code
(decode, hooks, encode, the scoreboard) lives in the runner, so backends stay swappable,
as Gearman::Driver kept Adaptor::PP and Adaptor::XS apart.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from gearman_driver.keepalive import DEFAULT_KEEPALIVE
from gearman_driver.protocol import DEFAULT_MAX_PACKET

log = logging.getLogger("gearman_driver.backends.base")

Server = tuple[str, int]


class GearmanJob(abc.ABC):
    """The job a user's method receives: identity, raw workload, and a way to talk to the client."""

    __slots__ = ("handle", "unique", "function", "workload")

    def __init__(self, handle: bytes, unique: bytes, function: str, workload: bytes) -> None:
        self.handle = handle
        self.unique = unique
        self.function = function
        self.workload = workload

    @abc.abstractmethod
    def send_status(self, numerator: int, denominator: int) -> None:
        """Send WORK_STATUS (progress) to a waiting client."""

    @abc.abstractmethod
    def send_data(self, data: bytes | str) -> None:
        """Send WORK_DATA (partial result) to a waiting client."""

    @abc.abstractmethod
    def send_warning(self, data: bytes | str) -> None:
        """Send WORK_WARNING to a waiting client."""

    def __repr__(self) -> str:
        return f"<GearmanJob {self.function} handle={self.handle!r} unique={self.unique!r}>"


def drain_wakeup(fd: int) -> None:
    """Empty the signal wakeup pipe (the signal itself was handled by its Python handler)."""
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def payload_bytes(data: bytes | str) -> bytes:
    """What `send_data`/`send_warning` put on the wire: str as UTF-8, bytes-likes as bytes."""
    return data.encode() if isinstance(data, str) else bytes(data)


class JobResult(NamedTuple):
    """What the runner tells the backend to send: WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION.
    A named tuple: immutable, and built once per job for a third of a frozen dataclass's cost."""

    status: Literal["complete", "fail", "exception"]
    data: bytes = b""


JobRunner = Callable[[GearmanJob], JobResult]
"""Runs one job; never raises (the child's runner turns every user error into a JobResult)."""


@dataclass(frozen=True)
class BackendHooks:
    """How a backend reports to the child and learns when to stop.

    should_stop: polled between jobs and at least every `poll_interval` seconds while idle.
    wakeup_fd: readable when a signal arrived (the child's `signal.set_wakeup_fd` pipe); a
        backend that can wait on it sees a stop request at once instead of at the next poll.
    on_registered: called with the server once gearmand has confirmed (ECHO round trip after
        CAN_DO) that this connection's functions are registered; again after each reconnect.
    on_disconnected: called with the server when a connection is lost.
    on_result_sent: called after a runner's result was written to gearmand's socket (True)
        or could not be (False: the connection failed; gearmand re-queues the job). Until
        then the job counts as in hand: a process that dies before it lost the job.
    """

    should_stop: Callable[[], bool]
    on_registered: Callable[[Server], None] = lambda server: None
    on_disconnected: Callable[[Server], None] = lambda server: None
    on_result_sent: Callable[[bool], None] = lambda delivered: None
    poll_interval: float = 0.5
    wakeup_fd: int | None = None


class WorkerBackend(abc.ABC):
    """One Gearman worker: all `servers`, all `functions` (name -> runner), one job at a time."""

    name: str = "abstract"

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
        self.servers = list(servers)
        self.max_workload = max_workload  # a larger job is failed without being run
        self.keepalive = keepalive  # seconds; every connection's probes and connect bound
        self.client_id = client_id
        self.functions = dict(functions)
        self.hooks = hooks
        self.max_backoff = max_backoff
        # gearmand speaks bytes: look runners up by the function name as it arrives
        self.runners: dict[bytes, tuple[str, JobRunner]] = {
            name.encode(): (name, runner) for name, runner in self.functions.items()
        }

    @staticmethod
    def result_lost(server: Server, handle: bytes, function: str | bytes, why: str) -> None:
        """Log, once per job, a result that never reached its server: gearmand re-queues the
        job (another worker, or this one once reconnected, runs it again)."""
        name = function if isinstance(function, str) else function.decode("utf-8", "replace")
        log.warning("job %s (handle %s) lost to %s:%d: %s before its result was sent; "
                    "gearmand re-queues it", name, handle.decode("ascii", "replace"),
                    server[0], server[1], why)

    def refuse_oversize(self, handle: bytes, function: bytes, size: int) -> None:
        """Log, once per job, a workload over `max_workload` that is failed unrun."""
        log.error("job %s (handle %s): workload of %d bytes exceeds max_workload_mb (%d "
                  "bytes); failing it without running it",
                  function.decode("utf-8", "replace"), handle.decode("ascii", "replace"),
                  size, self.max_workload)

    @abc.abstractmethod
    def forget_connections(self) -> None:
        """In a process forked from the worker (by a job): close this process's copies of
        the gearmand sockets (close, never shutdown), so that the connections end, and
        gearmand stops counting the worker, when the worker itself exits."""

    @abc.abstractmethod
    def run(self) -> None:
        """Work until hooks.should_stop() is true; never returns while a job is in hand.

        Connects to every server without blocking (connecting.py), so a silent server never
        delays the others; reconnects a lost connection with capped exponential backoff, and
        keeps working with the servers that are up.
        """
