"""The observer against real gearmand processes, driven by a real selector loop.

Workers are raw sockets that send SET_CLIENT_ID and CAN_DO (and GRAB_JOB to hold a job), so
the figures are exact: nothing takes a job unless the test says so.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gearman_driver.master.observer import FunctionStatus, Observer, Snapshot, driver_peers
from gearman_driver.protocol import Cmd, PacketParser, encode_request
from tests.gearmand_util import (
    TestClient,
    black_hole,
    free_port,
    start_gearmand,
    stop_gearmand,
    wait_for,
    worker_lines,
)

LOGGER = "test.observer"
Start = Callable[..., tuple[subprocess.Popen[bytes], int]]
Cleanup = list[Callable[[], None]]


class RawWorker:
    """A worker connection that registers functions and grabs jobs only when told to."""

    def __init__(self, port: int, client_id: str, *functions: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.parser = PacketParser()
        self.sock.sendall(
            encode_request(Cmd.SET_CLIENT_ID, client_id.encode())
            + b"".join(encode_request(Cmd.CAN_DO, f.encode()) for f in functions)
        )
        assert wait_for(lambda: any(client_id in line for line in worker_lines(port)))

    def grab(self) -> None:
        """Take one job and keep it: gearmand counts it as running until we go away."""
        self.sock.sendall(encode_request(Cmd.GRAB_JOB))
        while True:
            chunk = self.sock.recv(65536)
            assert chunk, "gearmand closed the worker connection"
            cmds = [p.cmd for p in self.parser.feed(chunk)]
            assert Cmd.NO_JOB not in cmds
            if Cmd.JOB_ASSIGN in cmds:
                return

    def close(self) -> None:
        self.sock.close()


class Loop:
    """The master's loop in miniature: select, call `key.data(mask)`, tick the observer."""

    def __init__(self, servers: list[tuple[str, int]], timeout: float = 2.0) -> None:
        self.selector = selectors.DefaultSelector()
        self.snapshots: list[Snapshot] = []
        self.turns = 0
        self.observer = Observer(
            servers,
            self.selector,
            timeout=timeout,
            log=logging.getLogger(LOGGER),
            on_snapshot=self.snapshots.append,
        )

    def run_until(self, done: Callable[[], bool], limit: float = 15.0) -> None:
        deadline = time.monotonic() + limit
        while not done():
            assert time.monotonic() < deadline, "the loop never got there"
            for key, mask in self.selector.select(timeout=0.05):
                key.data(mask)
            self.observer.tick(time.monotonic())
            self.turns += 1

    def poll(self) -> Snapshot:
        count = len(self.snapshots)
        assert self.observer.start_poll(time.monotonic())
        assert self.observer.in_flight
        assert not self.observer.start_poll(time.monotonic())  # one poll at a time
        assert len(self.snapshots) == count  # never completes inside start_poll
        self.run_until(lambda: len(self.snapshots) > count)
        assert len(self.snapshots) == count + 1
        assert not self.observer.in_flight
        assert self.observer.snapshot is self.snapshots[-1]
        return self.snapshots[-1]

    def close(self) -> None:
        self.observer.close()
        assert not self.selector.get_map()  # nothing of ours left registered
        self.selector.close()


@pytest.fixture
def gearmands(tmp_path: Path) -> Iterator[Start]:
    """Start gearmands on demand; stop every one by pid (SIGCONT first) at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(port: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
        proc, real_port = start_gearmand(tmp_path / f"g{len(procs)}", port=port)
        procs.append(proc)
        return proc, real_port

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        stop_gearmand(proc)


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    todo: list[Callable[[], None]] = []
    yield todo
    for fn in reversed(todo):
        fn()


def test_figures_summed_across_servers(gearmands: Start, cleanup: Cleanup) -> None:
    _, port_a = gearmands()
    _, port_b = gearmands()
    w1 = RawWorker(port_a, "hostA:101:10:Resize", "resize")
    w2 = RawWorker(port_a, "hostA:102:10:Thumbs", "thumbs")
    w3 = RawWorker(port_b, "hostB:201:20:Resize", "resize", "thumbs")
    w4 = RawWorker(port_b, "someone-else", "resize")
    for w in (w1, w2, w3, w4):
        cleanup.append(w.close)
    with TestClient(port_a) as client_a, TestClient(port_b) as client_b:
        for i in range(3):
            client_a.submit_bg("resize", b"a%d" % i)
        for i in range(2):
            client_b.submit_bg("resize", b"b%d" % i)
            client_a.submit_bg("thumbs", b"t%d" % i)
        client_b.submit_bg("nobody", b"x")
    w1.grab()  # one resize job running on A
    w2.grab()  # one thumbs job running on A

    loop = Loop([("127.0.0.1", port_a), ("127.0.0.1", port_b)])
    cleanup.append(loop.close)
    snap = loop.poll()

    assert set(snap.servers_up) == {("127.0.0.1", port_a), ("127.0.0.1", port_b)}
    assert snap.servers_down == ()
    assert snap.functions["resize"] == FunctionStatus("resize", 5, 1, 3)
    assert snap.functions["thumbs"] == FunctionStatus("thumbs", 2, 1, 2)
    assert snap.functions["nobody"] == FunctionStatus("nobody", 1, 0, 0)
    assert snap.waiting(["resize", "thumbs"]) == 5

    registered = {
        (w.server[1], w.client_id): set(w.functions) for w in snap.workers if w.functions
    }
    assert registered == {
        (port_a, "hostA:101:10:Resize"): {"resize"},
        (port_a, "hostA:102:10:Thumbs"): {"thumbs"},
        (port_b, "hostB:201:20:Resize"): {"resize", "thumbs"},
        (port_b, "someone-else"): {"resize"},
    }
    assert driver_peers(snap, ["resize"]) == {"hostA:10", "hostB:20"}
    assert driver_peers(snap, ["nobody"]) == set()

    # A second poll over fresh connections sees the same figures.
    assert loop.poll().functions == snap.functions


def test_down_server_logged_once_and_back_once(
    gearmands: Start, cleanup: Cleanup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    _, up_port = gearmands()
    down_port = free_port()
    down = ("127.0.0.1", down_port)
    loop = Loop([("127.0.0.1", up_port), down])
    cleanup.append(loop.close)

    def records(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level]

    for _ in range(3):
        snap = loop.poll()
        assert snap.servers_down == (down,)
        assert snap.servers_up == (("127.0.0.1", up_port),)
        assert "refused" in snap.down_reasons[down].lower()
    assert len(records(logging.WARNING)) == 1
    assert str(down_port) in records(logging.WARNING)[0]
    assert records(logging.INFO) == []

    gearmands(port=down_port)
    # a server that was down is not waited for: it rejoins a round or two later
    assert wait_for(lambda: loop.poll().servers_down == (), 5)
    for _ in range(3):
        snap = loop.poll()
        assert snap.servers_down == ()
        assert set(snap.servers_up) == {("127.0.0.1", up_port), down}
    assert len(records(logging.WARNING)) == 1
    infos = records(logging.INFO)
    assert len(infos) == 1 and str(down_port) in infos[0]


def test_all_servers_down_still_completes(cleanup: Cleanup) -> None:
    servers = [("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
    loop = Loop(servers)
    cleanup.append(loop.close)
    snap = loop.poll()
    assert snap.servers_up == () and set(snap.servers_down) == set(servers)
    assert dict(snap.functions) == {} and snap.workers == ()


def test_unresolvable_host_counts_as_down(cleanup: Cleanup) -> None:
    loop = Loop([("no-such-host.invalid", 4730)])
    cleanup.append(loop.close)
    snap = loop.poll()
    assert snap.servers_down == (("no-such-host.invalid", 4730),)


def test_stopped_gearmand_times_out(gearmands: Start, cleanup: Cleanup) -> None:
    stopped, stopped_port = gearmands()
    _, live_port = gearmands()
    worker = RawWorker(live_port, "h:1:2:J", "fn")
    cleanup.append(worker.close)
    os.kill(stopped.pid, signal.SIGSTOP)

    timeout = 0.5
    loop = Loop([("127.0.0.1", stopped_port), ("127.0.0.1", live_port)], timeout=timeout)
    cleanup.append(loop.close)
    started = time.monotonic()
    snap = loop.poll()
    elapsed = time.monotonic() - started

    assert snap.servers_down == (("127.0.0.1", stopped_port),)
    assert snap.servers_up == (("127.0.0.1", live_port),)
    assert "no answer" in snap.down_reasons[("127.0.0.1", stopped_port)]
    assert snap.functions["fn"].available_workers == 1
    assert elapsed < timeout + 5  # completed by the deadline, not by gearmand
    assert loop.turns > 3  # the loop kept turning while gearmand hung

    # Once it runs again it answers (a round or two later: a down server is not waited for).
    os.kill(stopped.pid, signal.SIGCONT)
    assert wait_for(lambda: loop.poll().servers_down == (), 5)


def test_close_abandons_poll_in_flight(gearmands: Start) -> None:
    stopped, port = gearmands()
    os.kill(stopped.pid, signal.SIGSTOP)
    loop = Loop([("127.0.0.1", port)])
    assert loop.observer.start_poll(time.monotonic())
    loop.run_until(lambda: bool(loop.selector.get_map()), limit=2)
    loop.close()  # asserts nothing is left registered
    assert not loop.observer.in_flight and loop.snapshots == []


def test_close_in_child_leaves_master_polling(gearmands: Start, cleanup: Cleanup) -> None:
    """A forked child shares the master's epoll; closing there must not unregister here."""
    _, port = gearmands()
    loop = Loop([("127.0.0.1", port)], timeout=3.0)
    cleanup.append(loop.close)
    count = len(loop.snapshots)
    assert loop.observer.start_poll(time.monotonic())
    pid = os.fork()
    if pid == 0:  # the child: what child.py does right after the fork
        code = 0
        try:
            loop.observer.close_in_child()
            code = 0 if not loop.observer.in_flight else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    loop.run_until(lambda: len(loop.snapshots) > count)
    assert loop.snapshots[-1].servers_up == (("127.0.0.1", port),)


@pytest.fixture
def silent() -> Iterator[tuple[str, int]]:
    with black_hole() as address:
        yield address


def test_a_silent_server_costs_one_timeout_then_nothing(
        gearmands: Start, silent: tuple[str, int], cleanup: Cleanup) -> None:
    """Once it is known down, a round completes as soon as the servers that answer did, and
    the silent one is tried in the background (its figures never count)."""
    _, live_port = gearmands()
    live = ("127.0.0.1", live_port)
    timeout = 5.0
    loop = Loop([silent, live], timeout=timeout)
    cleanup.append(loop.close)
    first = loop.poll()  # the first round waits for every server, up to the deadline
    assert first.servers_down == (silent,) and first.servers_up == (live,)
    for _ in range(3):
        started = time.monotonic()
        snap = loop.poll()
        assert time.monotonic() < started + timeout  # completed before the silent server's deadline
        assert snap.servers_down == (silent,) and snap.servers_up == (live,)
    assert [seen.state for seen in loop.observer.seen("h:1")] == ["down", "up"]


def test_the_masters_poll_connections_are_probed_too(gearmands: Start, cleanup: Cleanup) -> None:
    stopped, port = gearmands()
    os.kill(stopped.pid, signal.SIGSTOP)  # the poll's connection stays open while we look
    loop = Loop([("127.0.0.1", port)])
    loop.observer.keepalive = 7
    cleanup.append(loop.close)
    assert loop.observer.start_poll(time.monotonic())
    [key] = loop.selector.get_map().values()
    sock = key.fileobj
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 21000


def test_seen_tells_each_servers_state_and_our_processes(gearmands: Start, cleanup: Cleanup
                                                         ) -> None:
    _, port_a = gearmands()
    _, port_b = gearmands()
    down = ("127.0.0.1", free_port())
    workers = [RawWorker(port_a, "h:101:10:Job", "fn"), RawWorker(port_a, "h:102:10:Job", "fn"),
               RawWorker(port_b, "h:101:10:Job", "fn"), RawWorker(port_b, "h:201:20:Job", "fn")]
    for w in workers:
        cleanup.append(w.close)
    loop = Loop([("127.0.0.1", port_a), ("127.0.0.1", port_b), down])
    cleanup.append(loop.close)
    assert [s.state for s in loop.observer.seen("h:10")] == ["unknown"] * 3
    loop.poll()
    seen = loop.observer.seen("h:10")
    assert [(s.label, s.state, s.processes) for s in seen] == [
        (f"127.0.0.1:{port_a}", "up", 2), (f"127.0.0.1:{port_b}", "up", 1),
        (f"127.0.0.1:{down[1]}", "down", 0)]
    assert "refused" in seen[2].reason.lower()
    workers[0].close()  # a worker that goes away is no longer counted
    assert wait_for(lambda: loop.poll() and loop.observer.seen("h:10")[0].processes == 1)
