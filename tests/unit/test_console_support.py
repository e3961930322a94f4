"""Shared pieces of the console tests: an in-memory Controller (the master's interface, not a
fake gearmand), a selector loop in a thread standing in for the master's, and a line client."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gearman_driver.console.replies import JobRow, ProcessRow, ServerRow
from gearman_driver.console.server import ConsoleServer
from gearman_driver.streamserver import StreamServer


@dataclass
class Job:
    min_processes: int
    max_processes: int
    processes: list[ProcessRow] = field(default_factory=list)
    last_run: float = 0.0
    last_error: float = 0.0
    last_error_msg: str = ""


class MemoryController:
    """The job table in a dict; records what the console asked for."""

    def __init__(self, jobs: dict[str, Job] | None = None) -> None:
        self.jobs = jobs if jobs is not None else sample_jobs()
        self.stopped_pids: list[int] = []
        self.stopped_jobs: list[list[str]] = []
        self.shutdown_requested = False
        self.fail: Exception | None = None
        self.reloads: list[Callable[[str | None], None]] = []  # outcomes not yet told
        self.servers = [ServerRow("198.18.1.2:4730", "up", 12),
                        ServerRow("gearmand-two.example:4730", "down", 0),
                        ServerRow("[2001:db8::7]:4731", "unknown", 0)]

    def job_rows(self) -> Sequence[JobRow]:
        if self.fail is not None:
            raise self.fail
        return [
            JobRow(n, j.min_processes, j.max_processes, len(j.processes), j.last_run,
                   j.last_error, j.last_error_msg)
            for n, j in self.jobs.items()
        ]

    def process_rows(self, job: str) -> Sequence[ProcessRow]:
        return list(self.jobs[job].processes)

    def server_rows(self) -> Sequence[ServerRow]:
        return self.servers

    def has_job(self, job: str) -> bool:
        return job in self.jobs

    def set_limits(self, job: str, min_processes: int | None, max_processes: int | None) -> None:
        if min_processes is not None:
            self.jobs[job].min_processes = min_processes
        if max_processes is not None:
            self.jobs[job].max_processes = max_processes

    def stop_pids(self, pids: Sequence[int]) -> list[int]:
        ours = {p.pid for j in self.jobs.values() for p in j.processes}
        self.stopped_pids.extend(pids)
        return [p for p in pids if p in ours]

    def stop_jobs(self, jobs: Sequence[str]) -> None:
        self.stopped_jobs.append(list(jobs))

    def request_shutdown(self) -> None:
        self.shutdown_requested = True

    def request_reload(self, done: Callable[[str | None], None]) -> None:
        self.reloads.append(done)


T0 = 1795860000.0  # 2026-11-28T10:00:00Z


def sample_jobs() -> dict[str, Job]:
    return {
        "My::Workers::Two::scale_image": Job(1, 15, [
            ProcessRow(4711, True, 1234, 3.7), ProcessRow(815, False, 7, None),
        ], last_run=T0, last_error=T0 + 61, last_error_msg="db gone\nreconnect failed"),
        "a": Job(0, 1),
        "My::Workers::One::do_something_else": Job(2, 5, [ProcessRow(99999, False, 0, 0.2)],
                                                   last_run=T0),
    }


class Loop:
    """The master's loop in miniature: handler(mask) per ready key, tick at least every 50 ms.
    Any exception escaping a handler is recorded; the fixtures fail the test on it."""

    def __init__(self, server: StreamServer, selector: selectors.BaseSelector) -> None:
        self.server = server
        self.selector = selector
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Loop:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for key, mask in self.selector.select(0.05):
                    key.data(mask)
                self.server.tick(time.monotonic())
            except BaseException as exc:  # would have crashed the master
                self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def start_server(ctl: MemoryController, **kw: object) -> tuple[ConsoleServer, Loop]:
    sel = selectors.DefaultSelector()
    kw.setdefault("port", 0)
    server = ConsoleServer(ctl, sel, **kw)  # type: ignore[arg-type]
    server.open()
    return server, Loop(server, sel).start()


def stop_server(server: StreamServer, loop: Loop) -> None:
    loop.stop()
    server.close()
    loop.selector.close()
    assert not loop.errors, loop.errors


class Client:
    """A blocking line client with a timeout, so a hung server fails the test instead."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 5.0) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self) -> bytes | None:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def reply(self) -> list[str]:
        lines: list[str] = []
        while True:
            line = self.line()
            assert line is not None, f"connection closed mid-reply after {lines}"
            if line == b".":
                return lines
            lines.append(line.decode())

    def ask(self, command: str) -> list[str]:
        self.send(command + "\n")
        return self.reply()

    def closed(self) -> bool:
        """True once the server has hung up (EOF after anything still buffered)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False
