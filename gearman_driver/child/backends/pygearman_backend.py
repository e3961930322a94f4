"""The pygearman backend, wrapped where pygearman misbehaves on Python 3
(docs/architecture.md, Backends).

- task names are registered as bytes (a str name crashes the worker on the first job);
- results always reach pygearman as bytes (anything else kills its process);
- an ECHO round trip after CAN_DO tells us gearmand has registered the functions;
- pygearman connects with a blocking connect, again for each dead server on every turn of its
  loop, and only to the name's IPv4 addresses: one silent server stalled registration, jobs
  and stopping on every other server for 10 s a time. Our connection class connects without
  blocking instead (connecting.py: every address in turn, keepalive set, backoff between
  attempts) and hands pygearman the socket once it is connected; until then pygearman sees
  a server that is not there yet and goes on with the others;
- `work()` gives up when no server is connected: we wait for a connect in progress, the next
  retry or a signal, and call it again.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from typing import Any

import gearman
from gearman.connection import GearmanConnection
from gearman.errors import ConnectionError as GearmanConnectionError
from gearman.errors import ServerUnavailable
from gearman.protocol import GEARMAN_COMMAND_ECHO_REQ
from gearman.worker_handler import GearmanWorkerCommandHandler

from gearman_driver.child.backends.base import (
    GearmanJob,
    JobResult,
    Server,
    WorkerBackend,
    drain_wakeup,
    payload_bytes,
)
from gearman_driver.child.backends.connecting import Backoff, Connector

log = logging.getLogger("gearman_driver.backends.pygearman_backend")

_ECHO_TOKEN = b"gearman-driver-registered"


class _Job(GearmanJob):
    __slots__ = ("_worker", "_raw")

    def __init__(self, worker: _Worker, raw: Any, function: str) -> None:
        super().__init__(raw.handle, raw.unique or b"", function, raw.data)
        self._worker = worker
        self._raw = raw

    def send_status(self, numerator: int, denominator: int) -> None:
        self._worker.send_job_status(self._raw, int(numerator), int(denominator))

    def send_data(self, data: bytes | str) -> None:
        self._worker.send_job_data(self._raw, payload_bytes(data))

    def send_warning(self, data: bytes | str) -> None:
        self._worker.send_job_warning(self._raw, payload_bytes(data))


class _Handler(GearmanWorkerCommandHandler):
    """Adds the ECHO round trip that confirms registration, per connection."""

    def initial_state(self, abilities: Any = None, client_id: Any = None) -> None:
        super().initial_state(abilities=abilities, client_id=client_id)
        self.send_command(GEARMAN_COMMAND_ECHO_REQ, data=_ECHO_TOKEN)

    def recv_echo_res(self, data: bytes) -> bool:
        if data == _ECHO_TOKEN:
            self.connection_manager.on_registered(self)
        return True


class _Connection(GearmanConnection):
    """pygearman's connection, connected by our `Connector` (see the module docstring).

    pygearman calls `connect()` for every connection that is down on each turn of its loop
    (every poll, 0.1 s here); each call advances our attempt by one non-blocking step and
    raises pygearman's ConnectionError until the socket is connected, which pygearman takes
    for "not now" and goes on with the other servers."""

    connect_cooldown_seconds = 0.0  # our Backoff spaces the attempts, not pygearman's 1 s

    def __init__(self, server: Server, keepalive: float, max_backoff: float) -> None:
        super().__init__(host=server[0], port=server[1])
        self.server = server
        self.connector = Connector(server, keepalive)
        self.backoff = Backoff(max_backoff)
        self.failure = ""  # why the last read or write failed, as pygearman raised it

    def _create_client_socket(self) -> None:
        now = time.monotonic()
        connector = self.connector
        if connector.sock is None and now < self.backoff.retry_at:
            raise GearmanConnectionError("waiting to reconnect")
        try:
            if connector.sock is None:
                connector.begin()
            connected = connector.poll(now)
        except OSError as exc:  # every address failed
            connector.close()
            level = logging.INFO if self.backoff.failures == 0 else logging.DEBUG
            log.log(level, "cannot connect to %s:%d: %s (retrying with backoff)",
                    self.gearman_host, self.gearman_port, exc)
            self.backoff.failed(now)
            raise GearmanConnectionError(str(exc)) from None
        if not connected:
            raise GearmanConnectionError("connecting")
        self.set_socket(connector.take())

    def lost(self) -> None:
        """The connection failed: say why, reconnect after the backoff's next step."""
        reason = self.failure.split("> ", 1)[-1] or _socket_error(self.gearman_socket)
        log.info("closing connection to %s:%d: %s", self.gearman_host, self.gearman_port, reason)
        self.failure = ""
        self.backoff.failed(time.monotonic())

    def close(self) -> None:
        super().close()
        self.connector.close()


class _Worker(gearman.GearmanWorker):
    command_handler_class = _Handler
    connection_class = _Connection

    def __init__(self, backend: PygearmanBackend) -> None:
        self.backend = backend
        super().__init__(host_list=list(backend.servers))

    def add_connection(self, hostport_tuple: Server) -> _Connection:
        """Our connection for the server (an IPv6 host too: pygearman would split it on ':')."""
        connection = _Connection(hostport_tuple, self.backend.keepalive,
                                 self.backend.max_backoff)
        self.connection_list.append(connection)
        return connection

    def after_poll(self, any_activity: bool) -> bool:
        return not self.backend.hooks.should_stop()

    def on_registered(self, handler: _Handler) -> None:
        connection = self.handler_to_connection_map.get(handler)
        if connection is not None:
            connection.backoff.reset()
            log.info("registered %d functions with %s:%d", len(self.backend.runners),
                     connection.gearman_host, connection.gearman_port)
            self.backend.hooks.on_registered(connection.server)

    def handle_read(self, current_connection: Any) -> None:
        try:
            super().handle_read(current_connection)
        except GearmanConnectionError as exc:  # pygearman closes it in handle_error
            current_connection.failure = str(exc)
            raise

    def handle_write(self, current_connection: Any) -> None:
        try:
            super().handle_write(current_connection)
        except GearmanConnectionError as exc:
            current_connection.failure = str(exc)
            raise

    def handle_error(self, current_connection: Any) -> None:
        if current_connection not in self.connection_to_handler_map:
            super().handle_error(current_connection)  # already closed (pygearman may ask twice)
            return
        current_connection.lost()  # before super() closes its socket
        super().handle_error(current_connection)
        self.backend.hooks.on_disconnected(current_connection.server)

    def on_job_execute(self, current_job: Any) -> bool:
        result = self.backend.run_job(self, current_job)
        delivered = False
        connection = current_job.connection
        try:
            if result.status == "complete":
                self.send_job_complete(current_job, result.data)
            elif result.status == "exception":
                # WORK_EXCEPTION alone: gearmand 1.1.20 ends the job on it, and pygearman's own
                # send_job_exception() follows it with a WORK_FAIL that earns an ERROR
                handler = self._get_handler_for_job(current_job)
                handler.send_job_exception(current_job, result.data)
                self.wait_until_updates_sent([current_job])
            else:
                self.send_job_failure(current_job)
            # pygearman waits until it is written, or raises when the connection failed
            delivered = connection.connected and not connection.writable()
        finally:
            if not delivered:
                self.backend.result_lost(connection.server, current_job.handle,
                                         current_job.task, "the connection failed")
            self.backend.hooks.on_result_sent(delivered)
        return result.status == "complete"


class PygearmanBackend(WorkerBackend):
    """Works jobs with pygearman's GearmanWorker; one job at a time, stop flag every poll."""

    name = "pygearman"

    def run_job(self, worker: _Worker, raw: Any) -> JobResult:
        if len(raw.data) > self.max_workload:  # pygearman has buffered it all by now
            self.refuse_oversize(raw.handle, raw.task, len(raw.data))
            return JobResult("fail")
        name, runner = self.runners[raw.task]
        return runner(_Job(worker, raw, name))

    _worker: _Worker | None = None

    def forget_connections(self) -> None:
        if self._worker is not None:
            for connection in self._worker.connection_list:
                for sock in (connection.gearman_socket, connection.connector.sock):
                    if sock is not None:
                        sock.close()

    def _make_worker(self) -> _Worker:
        worker = _Worker(self)
        worker.set_client_id(self.client_id.encode())
        for name in self.runners:
            worker.register_task(name, None)  # dispatch happens in on_job_execute
        return worker

    def run(self) -> None:
        worker = self._worker = self._make_worker()
        # pygearman's loop cannot wait on the signal pipe: poll often enough that a stop
        # request is seen within 0.1 s (an idle wake-up costs microseconds); each turn also
        # advances the connects in progress
        poll = min(self.hooks.poll_interval, 0.1)
        try:
            while not self.hooks.should_stop():
                try:
                    worker.work(poll_timeout=poll)
                    return
                except ServerUnavailable:
                    pass  # no server connected (now)
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        # our descriptors were closed under us (by the job): pygearman cannot
                        # recover; exit, and the master backs off the replacement
                        raise
                    log.info("gearman connection error: %s", exc)
                self._wait_for_a_server(worker)
        finally:
            worker.shutdown()

    def _wait_for_a_server(self, worker: _Worker) -> None:
        """No server is connected: wait until a connect in progress ends, the next attempt is
        due or a signal arrives (without a signal pipe, at most poll_interval)."""
        now = time.monotonic()
        most = self.max_backoff if self.hooks.wakeup_fd is not None else \
            self.hooks.poll_interval
        due = now + most
        poller = select.poll()
        if self.hooks.wakeup_fd is not None:
            poller.register(self.hooks.wakeup_fd, select.POLLIN)
        for connection in worker.connection_list:
            connector = connection.connector
            if connector.sock is not None:
                poller.register(connector.sock, select.POLLOUT)
                due = min(due, connector.deadline)
            else:
                due = min(due, connection.backoff.retry_at)
        if due > now:
            poller.poll((due - now) * 1000)
        if self.hooks.wakeup_fd is not None:
            drain_wakeup(self.hooks.wakeup_fd)


def _socket_error(sock: socket.socket | None) -> str:
    """Why a connection failed, as the kernel has it (a dead peer: "Connection timed out")."""
    try:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if sock is not None else 0
    except OSError as exc:
        return exc.strerror or str(exc)
    return os.strerror(err) if err else "connection closed"


__all__ = ["PygearmanBackend", "Server"]
