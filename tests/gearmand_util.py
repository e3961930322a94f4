"""A real gearmand for tests, its admin protocol, and a tiny blocking client.

Tests use a real server (no fake gearmand in integration tests); this module starts it on a
free loopback port, waits until it answers, and stops it by pid. The client speaks the binary
protocol through gearman_driver.protocol so it sees every packet a foreground client can get
(WORK_STATUS, WORK_DATA, WORK_WARNING, WORK_EXCEPTION, WORK_FAIL, WORK_COMPLETE).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gearman_driver.protocol import Cmd, Packet, PacketParser, encode_request

GEARMAND = "/usr/sbin/gearmand"


def free_port() -> int:
    """A loopback port nobody listens on now (gearmand retries a busy port for ~22 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def black_hole() -> Iterator[tuple[str, int]]:
    """A silent server on loopback: a listener whose accept queue is full drops further SYNs,
    so a connect to it neither succeeds nor fails (as to a host that vanished)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    try:
        for sock in fillers:  # fill the accept queue; later SYNs are dropped
            sock.setblocking(False)
            sock.connect_ex(listener.getsockname())
        yield listener.getsockname()
    finally:
        for sock in [*fillers, listener]:
            sock.close()


def admin(port: int, command: str, timeout: float = 5.0, host: str = "127.0.0.1") -> list[str]:
    """Run one text admin command; return its lines (without the closing '.')."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(command.encode() + b"\n")
        data = b""
        single = command.split()[0] in ("version", "maxqueue", "verbose", "getpid")
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if single and data.endswith(b"\n"):
                break
            if data == b".\n" or data.endswith(b"\n.\n"):
                break
    lines = data.decode(errors="replace").splitlines()
    if lines and lines[-1] == ".":
        lines.pop()
    return lines


def start_gearmand(
    tmp_path: Path, *extra_args: str, port: int | None = None, timeout: float = 10.0,
    listen: str = "127.0.0.1",
) -> tuple[subprocess.Popen[bytes], int]:
    """Start gearmand on a free (or the given) loopback port of the `listen` address only;
    return once `version` answers."""
    port = port or free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    cmd = [
        GEARMAND,
        f"--listen={listen}",
        f"--port={port}",
        f"--log-file={tmp_path / f'gearmand-{port}.log'}",
        f"--pid-file={tmp_path / f'gearmand-{port}.pid'}",
        "--verbose=INFO",
        *extra_args,
    ]
    if not any(arg.startswith(("--threads", "-t")) for arg in extra_args):
        cmd.append("--threads=1")  # one I/O thread: fewer moving parts, same speed here
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gearmand exited with {proc.returncode}: {cmd}")
        try:
            if admin(port, "version", timeout=0.5, host=listen):
                return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_gearmand(proc)
            raise RuntimeError(f"gearmand did not answer on port {port}")
        time.sleep(0.01)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
    """SIGTERM by pid, wait, SIGKILL if it lingers; always reaped. Returns its exit status."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def stop_gearmand(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate gearmand by pid and reap it (SIGKILL if it lingers)."""
    stop_process(proc, timeout)


def worker_lines(port: int) -> list[str]:
    """`workers` lines that have functions registered (skips our own admin connection)."""
    return [line for line in admin(port, "workers") if not line.rstrip().endswith(":")]


def status_table(port: int) -> dict[str, tuple[int, int, int]]:
    """`status` as {function: (total, running, available_workers)}."""
    table: dict[str, tuple[int, int, int]] = {}
    for line in admin(port, "status"):
        parts = line.split("\t")
        if len(parts) == 4:
            table[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return table


def running(port: int, function: str) -> int:
    """Jobs of `function` that gearmand says a worker is running now."""
    return status_table(port).get(function, (0, 0, 0))[1]


def waiting(port: int, function: str) -> int:
    """Jobs of `function` queued and not yet taken (TOTAL includes the running ones)."""
    total, in_hand, _ = status_table(port).get(function, (0, 0, 0))
    return total - in_hand


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll `predicate()` until true or timeout; return its last truthiness."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


@dataclass
class JobOutcome:
    """Everything a foreground client saw for one job, in order."""

    handle: bytes = b""
    events: list[tuple[str, tuple[bytes, ...]]] = field(default_factory=list)

    @property
    def final(self) -> str:
        return self.events[-1][0] if self.events else ""

    @property
    def result(self) -> bytes:
        return self.events[-1][1][-1] if self.events and self.events[-1][1] else b""

    def of(self, kind: str) -> list[tuple[bytes, ...]]:
        return [args for name, args in self.events if name == kind]


_FINAL: dict[int, str] = {
    Cmd.WORK_COMPLETE: "complete", Cmd.WORK_FAIL: "fail", Cmd.WORK_EXCEPTION: "exception",
}
_PARTIAL: dict[int, str] = {
    Cmd.WORK_STATUS: "status", Cmd.WORK_DATA: "data", Cmd.WORK_WARNING: "warning",
}


class TestClient:
    """Blocking Gearman client over our codec: submits jobs and records what comes back."""

    __test__ = False  # not a pytest class

    def __init__(self, port: int, timeout: float = 30.0, exceptions: bool = False,
                 host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = PacketParser()
        self.pending: list[Packet] = []
        if exceptions:
            self.sock.sendall(encode_request(Cmd.OPTION_REQ, b"exceptions"))
            self._expect(Cmd.OPTION_RES)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next(self) -> Packet:
        while not self.pending:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("gearmand closed the connection")
            self.pending.extend(self.parser.feed(chunk))
        return self.pending.pop(0)

    def _expect(self, cmd: int) -> Packet:
        packet = self._next()
        if packet.cmd == Cmd.ERROR:
            raise RuntimeError(f"gearmand error: {packet.args!r}")
        if packet.cmd != cmd:
            raise RuntimeError(f"expected {Cmd(cmd).name}, got {Cmd(packet.cmd).name}")
        return packet

    def submit_bg(self, function: str, data: bytes, unique: bytes = b"") -> bytes:
        """Queue a background job; return its handle."""
        self.sock.sendall(encode_request(Cmd.SUBMIT_JOB_BG, function.encode(), unique, data))
        return self._expect(Cmd.JOB_CREATED).args[0]

    def submit_many_bg(self, function: str, payloads: list[bytes], unique: bool = False) -> None:
        """Queue many background jobs, pipelined (for benchmarks and bursts). `unique`: each
        payload is also its job's unique id (a persistent queue keys jobs by it)."""
        name = function.encode()
        batch = 1000
        for i in range(0, len(payloads), batch):
            part = payloads[i : i + batch]
            self.sock.sendall(b"".join(
                encode_request(Cmd.SUBMIT_JOB_BG, name, p if unique else b"", p) for p in part))
            for _ in part:
                self._expect(Cmd.JOB_CREATED)

    def submit(self, function: str, data: bytes, unique: bytes = b"") -> JobOutcome:
        """Run a foreground job; return every packet seen up to its final one."""
        return self.finish(self.start(function, data, unique))

    def start(self, function: str, data: bytes, unique: bytes = b"") -> JobOutcome:
        """Submit a foreground job and return once gearmand has created it; `finish` waits."""
        self.sock.sendall(encode_request(Cmd.SUBMIT_JOB, function.encode(), unique, data))
        return JobOutcome(handle=self._expect(Cmd.JOB_CREATED).args[0])

    def finish(self, outcome: JobOutcome) -> JobOutcome:
        """Collect a started job's packets up to its final one."""
        while True:
            packet = self._next()
            if packet.cmd == Cmd.ERROR:
                raise RuntimeError(f"gearmand error: {packet.args!r}")
            name = _FINAL.get(packet.cmd) or _PARTIAL.get(packet.cmd)
            if name is None:
                raise RuntimeError(f"unexpected {Cmd(packet.cmd).name}")
            outcome.events.append((name, packet.args[1:]))
            if packet.cmd in _FINAL:
                # gearmand may follow WORK_EXCEPTION with WORK_FAIL: collect it if it comes
                if packet.cmd == Cmd.WORK_EXCEPTION:
                    self._drain_trailing(outcome)
                return outcome

    def _drain_trailing(self, outcome: JobOutcome, wait: float = 0.2) -> None:
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            while True:
                packet = self._next()
                name = _FINAL.get(packet.cmd) or _PARTIAL.get(packet.cmd) or Cmd(packet.cmd).name
                outcome.events.append((name, packet.args[1:]))
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(old)


def submit_in_thread(port: int, function: str, data: bytes
                     ) -> tuple[threading.Thread, list[JobOutcome]]:
    """Run one foreground job from a thread; its outcome is appended to the list when done."""
    outcomes: list[JobOutcome] = []

    def submit() -> None:
        with TestClient(port) as client:
            outcomes.append(client.submit(function, data))

    thread = threading.Thread(target=submit)
    thread.start()
    return thread, outcomes
