"""The pygearman backend, wrapped where pygearman misbehaves on Python 3
(docs/architecture.md, Backends).

- task names are registered as bytes (a str name crashes the worker on the first job);
- results always reach pygearman as bytes (anything else kills its process);
- an ECHO round trip after CAN_DO tells us gearmand has registered the functions;
- `work()` gives up when every server is down: we call it again with a capped backoff;
- pygearman connects an IPv4 socket to the name, so only its IPv4 addresses are ever tried:
  our connection class tries every address in turn, as `socket.create_connection` does.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Any

import gearman
from gearman.connection import GearmanConnection
from gearman.errors import ServerUnavailable
from gearman.protocol import GEARMAN_COMMAND_ECHO_REQ
from gearman.worker_handler import GearmanWorkerCommandHandler

from gearman_driver.child.backends.base import (
    CONNECT_TIMEOUT,
    GearmanJob,
    JobResult,
    Server,
    WorkerBackend,
    payload_bytes,
)

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
    """Every address of the server's name in turn (IPv6 and IPv4), blocking as pygearman's own
    connect is, but at most CONNECT_TIMEOUT per address."""

    def _create_client_socket(self) -> None:
        try:
            sock = socket.create_connection((self.gearman_host, self.gearman_port),
                                            timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            self.throw_exception(exception=exc)
        self.set_socket(sock)


class _Worker(gearman.GearmanWorker):
    command_handler_class = _Handler
    connection_class = _Connection

    def __init__(self, backend: PygearmanBackend, host_list: list[str]) -> None:
        super().__init__(host_list=host_list)
        self.backend = backend

    def after_poll(self, any_activity: bool) -> bool:
        return not self.backend.hooks.should_stop()

    def on_registered(self, handler: _Handler) -> None:
        connection = self.handler_to_connection_map.get(handler)
        if connection is not None:
            self.backend.hooks.on_registered((connection.gearman_host, connection.gearman_port))

    def handle_error(self, current_connection: Any) -> None:
        was_connected = current_connection in self.connection_to_handler_map
        super().handle_error(current_connection)
        if was_connected:
            server = (current_connection.gearman_host, current_connection.gearman_port)
            self.backend.hooks.on_disconnected(server)

    def on_job_execute(self, current_job: Any) -> bool:
        result = self.backend.run_job(self, current_job)
        delivered = False
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
            connection = current_job.connection  # pygearman waits until it is written
            delivered = connection.connected and not connection.writable()
        finally:
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
                if connection.gearman_socket is not None:
                    connection.gearman_socket.close()

    def _make_worker(self) -> _Worker:
        worker = _Worker(self, [f"{host}:{port}" for host, port in self.servers])
        worker.set_client_id(self.client_id.encode())
        for name in self.runners:
            worker.register_task(name, None)  # dispatch happens in on_job_execute
        return worker

    def run(self) -> None:
        worker = self._worker = self._make_worker()
        backoff = 0.1
        # pygearman's loop cannot wait on the signal pipe: poll often enough that a stop
        # request is seen within 0.1 s (an idle wake-up costs microseconds)
        poll = min(self.hooks.poll_interval, 0.1)
        try:
            while not self.hooks.should_stop():
                started = time.monotonic()
                try:
                    worker.work(poll_timeout=poll)
                    return
                except ServerUnavailable:
                    pass
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        # our descriptors were closed under us (by the job): pygearman cannot
                        # recover; exit, and the master backs off the replacement
                        raise
                    log.warning("gearman connection error: %s", exc)
                if time.monotonic() - started > 1.0:
                    backoff = 0.1  # it had been working: this is a new outage
                self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        finally:
            worker.shutdown()

    def _sleep(self, seconds: float) -> None:
        """Back off without missing a stop request for long."""
        deadline = time.monotonic() + seconds
        while not self.hooks.should_stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))


__all__ = ["PygearmanBackend", "Server"]
