"""NativeBackend against a real gearmand (and, for garbage, a plain listening socket).

The backend runs in a forked child, stopped through a multiprocessing.Event and, failing
that, killed by pid; it reports hooks and log records back through a queue.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gearmand_util import (  # noqa: E402
    TestClient,
    admin,
    free_port,
    running,
    start_gearmand,
    status_table,
    stop_gearmand,
    submit_in_thread,
    wait_for,
    worker_lines,
)

from gearman_driver.child.backends.base import BackendHooks, GearmanJob, JobResult, Server  # noqa: E402
from gearman_driver.child.backends.native import NativeBackend  # noqa: E402
from gearman_driver.protocol import DEFAULT_MAX_PACKET, RES, Cmd, encode_response  # noqa: E402

CTX = mp.get_context("fork")
LOCAL = "127.0.0.1"
Runner = Callable[[GearmanJob], JobResult]


# -- runners (module level: the child inherits them through fork) -------------------------

def reverse(job: GearmanJob) -> JobResult:
    return JobResult("complete", job.workload[::-1])


def echo(job: GearmanJob) -> JobResult:
    return JobResult("complete", job.workload)


def sized(job: GearmanJob) -> JobResult:
    """A result of the requested size with NULs in it, from a tiny workload."""
    size = int(job.workload)
    return JobResult("complete", (b"\0\1\2result" * (size // 9 + 1))[:size])


def progress(job: GearmanJob) -> JobResult:
    job.send_status(1, 3)
    job.send_data(b"part\0one")
    job.send_warning("careful")
    job.send_status(3, 3)
    return JobResult("complete", b"done")


def boom(job: GearmanJob) -> JobResult:
    return JobResult("exception", b"msg")


def fail(job: GearmanJob) -> JobResult:
    return JobResult("fail")


class Worker:
    """A NativeBackend in a forked child; everything it reports arrives on `events`."""

    def __init__(
        self,
        servers: list[Server],
        functions: dict[str, Runner],
        *,
        client_id: str = "native-test",
        max_backoff: float = 0.5,
        poll_interval: float = 0.5,
        on_registered_probe: Callable[[Server], Any] | None = None,
        max_workload: int = DEFAULT_MAX_PACKET,
    ) -> None:
        self.stop_flag = CTX.Event()
        self.events: mp.Queue[tuple[Any, ...]] = CTX.Queue()
        self.seen: list[tuple[Any, ...]] = []
        args = (servers, functions, client_id, max_backoff, poll_interval, on_registered_probe,
                max_workload)
        self.proc = CTX.Process(target=self._main, args=args, daemon=True)
        self.proc.start()

    def _main(
        self, servers: list[Server], functions: dict[str, Runner], client_id: str,
        max_backoff: float, poll_interval: float,
        probe: Callable[[Server], Any] | None, max_workload: int,
    ) -> None:
        events = self.events

        class ToQueue(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                events.put(("log", record.levelname, record.getMessage()))

        logger = logging.getLogger("gearman_driver.backends.native")
        logger.addHandler(ToQueue())
        logger.setLevel(logging.DEBUG)

        def registered(server: Server) -> None:
            events.put(("registered", server, probe(server) if probe else None))

        hooks = BackendHooks(
            should_stop=self.stop_flag.is_set,
            on_registered=registered,
            on_disconnected=lambda server: events.put(("disconnected", server)),
            poll_interval=poll_interval,
        )
        NativeBackend(servers, client_id, functions, hooks, max_backoff=max_backoff,
                      max_workload=max_workload).run()
        events.put(("returned",))

    def wait(self, kind: str, *match: Any, timeout: float = 10.0) -> tuple[Any, ...]:
        """The next event of `kind` (whose first fields equal `match`) not seen before."""
        deadline = time.monotonic() + timeout
        for i, event in enumerate(self.seen):
            if event[0] == kind and event[1 : 1 + len(match)] == match:
                return self.seen.pop(i)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} {match} event; seen {self.seen}")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event[0] == kind and event[1 : 1 + len(match)] == match:
                return event
            self.seen.append(event)

    def drain(self, wait: float = 0.2) -> list[tuple[Any, ...]]:
        time.sleep(wait)
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return self.seen

    def logs(self, level: str) -> list[str]:
        return [e[2] for e in self.drain() if e[0] == "log" and e[1] == level]

    def stop(self, timeout: float = 5.0) -> float:
        """Ask it to stop; return how long it took; kill by pid if it would not."""
        start = time.monotonic()
        self.stop_flag.set()
        self.proc.join(timeout)
        took = time.monotonic() - start
        self.kill()
        return took

    def kill(self) -> None:
        if self.proc.is_alive() and self.proc.pid is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.join(5)


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def make(*args: Any, **kwargs: Any) -> Worker:
        worker = Worker(*args, **kwargs)
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


@pytest.fixture
def gearmand(tmp_path: Path) -> Iterator[int]:
    proc, port = start_gearmand(tmp_path)
    yield port
    stop_gearmand(proc)


def test_results_and_nul_bytes(gearmand: int, workers: Callable[..., Worker]) -> None:
    worker = workers([(LOCAL, gearmand)], {"reverse": reverse, "echo": echo, "fail": fail})
    worker.wait("registered", (LOCAL, gearmand))
    with TestClient(gearmand) as client:
        assert client.submit("reverse", b"abc\0def").events == [("complete", (b"fed\0cba",))]
        assert client.submit("echo", b"").events == [("complete", (b"",))]
        assert client.submit("echo", b"\0\0\0").result == b"\0\0\0"
        assert client.submit("fail", b"x").events == [("fail", ())]
        for i in range(200):
            assert client.submit("reverse", b"%d" % i).result == (b"%d" % i)[::-1]
    assert any("native-test : " in line and "reverse" in line for line in worker_lines(gearmand))
    assert worker.logs("ERROR") == []


@pytest.mark.parametrize("size", [1 << 20, 16 << 20])
def test_large_workloads_and_results(
    gearmand: int, workers: Callable[..., Worker], size: int
) -> None:
    worker = workers([(LOCAL, gearmand)], {"echo": echo, "sized": sized})
    worker.wait("registered", (LOCAL, gearmand))
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    with TestClient(gearmand, timeout=60) as client:
        outcome = client.submit("echo", payload)
        assert outcome.final == "complete" and outcome.result == payload
        outcome = client.submit("sized", b"%d" % size)
        assert len(outcome.result) == size and outcome.result[:3] == b"\0\1\2"
    assert worker.logs("ERROR") == []


def test_status_data_and_warning_reach_foreground_client(
    gearmand: int, workers: Callable[..., Worker]
) -> None:
    worker = workers([(LOCAL, gearmand)], {"progress": progress})
    worker.wait("registered", (LOCAL, gearmand))
    with TestClient(gearmand) as client:
        outcome = client.submit("progress", b"")
    assert outcome.events == [
        ("status", (b"1", b"3")),
        ("data", (b"part\0one",)),
        ("warning", (b"careful",)),
        ("status", (b"3", b"3")),
        ("complete", (b"done",)),
    ]


@pytest.mark.parametrize("flag", [False, True], ids=["plain", "--exceptions"])
def test_exception_result(tmp_path: Path, workers: Callable[..., Worker], flag: bool) -> None:
    proc, port = start_gearmand(tmp_path, *(["--exceptions"] if flag else []))
    try:
        worker = workers([(LOCAL, port)], {"boom": boom, "echo": echo})
        worker.wait("registered", (LOCAL, port))
        with TestClient(port) as client:
            outcome = client.submit("boom", b"x")
            if flag:  # WORK_EXCEPTION ends the job: nothing follows it
                assert outcome.events == [("exception", (b"msg",))]
            else:  # gearmand turns it into WORK_FAIL for clients without exceptions
                assert outcome.events == [("fail", ())]
            assert client.submit("echo", b"after").result == b"after"
        with TestClient(port, exceptions=True) as client:  # the per-client option
            assert client.submit("boom", b"x").events == [("exception", (b"msg",))]
        assert status_table(port)["boom"][:2] == (0, 0)
        # no ERROR from gearmand (e.g. JOB_NOT_FOUND), so no reconnect
        events = worker.drain()
        assert [e for e in events if e[0] in ("registered", "disconnected")] == []
        assert worker.logs("ERROR") == []
    finally:
        stop_gearmand(proc)


def test_two_servers_one_down_at_start_one_restarted(
    tmp_path: Path, workers: Callable[..., Worker]
) -> None:
    proc_a, port_a = start_gearmand(tmp_path / "a")
    port_b = free_port()
    proc_b = None
    a, b = (LOCAL, port_a), (LOCAL, port_b)
    try:
        worker = workers([b, a], {"echo": echo}, max_backoff=0.5)
        worker.wait("registered", a)
        with TestClient(port_a) as client:  # B's absence does not stall A
            assert client.submit("echo", b"a1").result == b"a1"
        proc_b, _ = start_gearmand(tmp_path / "b", port=port_b)
        worker.wait("registered", b)
        assert any("native-test" in line for line in worker_lines(port_b))
        with TestClient(port_b) as client:
            assert client.submit("echo", b"b1").result == b"b1"

        stop_gearmand(proc_a)  # A goes away mid-run; B keeps working
        worker.wait("disconnected", a)
        with TestClient(port_b) as client:
            for i in range(50):
                assert client.submit("echo", b"b%d" % i).result == b"b%d" % i
        proc_a, _ = start_gearmand(tmp_path / "a2", port=port_a)
        worker.wait("registered", a)
        assert wait_for(lambda: any("native-test" in x for x in worker_lines(port_a)), 5)
        with TestClient(port_a) as client, TestClient(port_b) as other:
            for i in range(20):
                assert client.submit("echo", b"a%d" % i).result == b"a%d" % i
                assert other.submit("echo", b"b%d" % i).result == b"b%d" % i
        assert worker.proc.is_alive()
        assert worker.logs("ERROR") == []
    finally:
        stop_gearmand(proc_a)
        if proc_b is not None:
            stop_gearmand(proc_b)


def test_many_functions(gearmand: int, workers: Callable[..., Worker]) -> None:
    def named(name: str) -> Runner:
        return lambda job: JobResult("complete", name.encode() + b":" + job.workload)

    names = [f"func_{i:02d}" for i in range(50)]
    worker = workers([(LOCAL, gearmand)], {name: named(name) for name in names})
    worker.wait("registered", (LOCAL, gearmand))
    [line] = [x for x in worker_lines(gearmand) if "native-test" in x]
    assert sorted(line.split(" : ")[1].split()) == names
    with TestClient(gearmand) as client:
        for name in reversed(names):
            assert client.submit(name, b"x").result == name.encode() + b":x"


def _admin_probe(port: int) -> Callable[[Server], Any]:
    def probe(server: Server) -> Any:
        # runs inside on_registered: gearmand must already know our functions
        return status_table(port).get("echo"), worker_lines(port)

    return probe


def test_on_registered_after_can_do_processed(
    tmp_path: Path, workers: Callable[..., Worker]
) -> None:
    proc, port = start_gearmand(tmp_path, "--threads=4")
    try:
        worker = workers([(LOCAL, port)], {"echo": echo}, on_registered_probe=_admin_probe(port))
        event = worker.wait("registered", (LOCAL, port))
        status, lines = event[2]
        assert status is not None and status[2] >= 1  # one available worker for "echo"
        assert any("native-test : echo" in line for line in lines)
        with TestClient(port) as client:
            assert client.submit("echo", b"now").result == b"now"
    finally:
        stop_gearmand(proc)


def test_should_stop_while_idle(gearmand: int, workers: Callable[..., Worker]) -> None:
    worker = workers([(LOCAL, gearmand)], {"echo": echo})
    worker.wait("registered", (LOCAL, gearmand))
    worker.stop()  # how fast an idle worker stops: bench/control.py
    assert worker.proc.exitcode == 0
    worker.wait("returned")
    assert wait_for(lambda: not any("native-test" in x for x in worker_lines(gearmand)), 5)


def sleepy(job: GearmanJob) -> JobResult:
    time.sleep(float(job.workload))
    return JobResult("complete", b"slept")


def test_should_stop_waits_for_the_running_job(
    gearmand: int, workers: Callable[..., Worker]
) -> None:
    worker = workers([(LOCAL, gearmand)], {"sleepy": sleepy})
    worker.wait("registered", (LOCAL, gearmand))
    thread, outcomes = submit_in_thread(gearmand, "sleepy", b"1.5")
    assert wait_for(lambda: running(gearmand, "sleepy") == 1, 5)
    with TestClient(gearmand) as client:
        client.submit_bg("sleepy", b"0")  # must stay queued: the worker stops after one job
    worker.stop_flag.set()
    worker.proc.join(10)
    thread.join(10)
    # it finished the job in hand before leaving, and left of itself
    assert outcomes and outcomes[0].events == [("complete", (b"slept",))]
    assert worker.proc.exitcode == 0
    assert status_table(gearmand)["sleepy"][:2] == (1, 0)  # the second job was not taken


def test_server_lost_during_a_job(tmp_path: Path, workers: Callable[..., Worker]) -> None:
    proc, port = start_gearmand(tmp_path / "1")
    try:
        worker = workers([(LOCAL, port)], {"sleepy": sleepy, "echo": echo}, max_backoff=0.3)
        worker.wait("registered", (LOCAL, port))
        with TestClient(port) as client:
            client.submit_bg("sleepy", b"1.0")
        assert wait_for(lambda: status_table(port).get("sleepy", (0, 0, 0))[1] == 1, 5)
        stop_gearmand(proc)  # the result of the job in hand has nowhere to go
        proc, _ = start_gearmand(tmp_path / "2", port=port)
        worker.wait("disconnected", (LOCAL, port))
        worker.wait("registered", (LOCAL, port))
        with TestClient(port) as client:
            assert client.submit("echo", b"back").result == b"back"
        assert worker.proc.is_alive()
        assert worker.logs("ERROR") == []
    finally:
        stop_gearmand(proc)


# -- a fake peer that speaks garbage ----------------------------------------------------------

GARBAGE = {
    "bad-magic": b"HTTP/1.1 400 Bad Request\r\n\r\n",
    "unknown-type": RES + struct.pack(">II", 99, 0),
    # (an oversize *job* is read past and failed instead: tests/faults/test_memory_limits.py)
    "oversized": RES + struct.pack(">II", Cmd.ECHO_RES, 0xFFFFFFF0),
    "wrong-arg-count": RES + struct.pack(">II", Cmd.JOB_ASSIGN_UNIQ, 3) + b"a\0b",
    "truncated-then-close": encode_response(Cmd.JOB_ASSIGN_UNIQ, b"H:1", b"echo", b"", b"x")[:15],
    "server-error": encode_response(Cmd.ERROR, b"ERR", b"something broke"),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_malformed_packet_closes_and_reconnects(
    workers: Callable[..., Worker], kind: str
) -> None:
    listener = socket.socket()
    listener.bind((LOCAL, 0))
    listener.listen(4)
    listener.settimeout(10)
    port = listener.getsockname()[1]
    try:
        worker = workers([(LOCAL, port)], {"echo": echo}, max_backoff=0.2)
        peer, _ = listener.accept()
        with peer:
            peer.settimeout(5)
            hello = peer.recv(65536)
            assert hello.startswith(b"\0REQ")
            peer.sendall(GARBAGE[kind])
            if kind == "truncated-then-close":
                peer.shutdown(socket.SHUT_WR)
            # the backend closes its side: we read EOF (after whatever it still sent)
            deadline = time.monotonic() + 5
            while peer.recv(65536) and time.monotonic() < deadline:
                pass
        again, _ = listener.accept()  # it reconnects with backoff
        with again:
            again.settimeout(5)
            assert again.recv(65536).startswith(b"\0REQ")
        assert worker.proc.is_alive()
        errors = [m for m in worker.logs("ERROR") if f"{LOCAL}:{port}" in m]
        assert len(errors) == 1, errors
    finally:
        listener.close()


def test_admin_helper_sees_nothing_registered_without_workers(gearmand: int) -> None:
    assert admin(gearmand, "version")[0].startswith("OK")
    assert worker_lines(gearmand) == []
