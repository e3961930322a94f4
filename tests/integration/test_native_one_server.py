"""NativeBackend's single-server job path (native_jobs.py, `_jobs_in_a_row`) vs a scripted peer.

With one server the backend runs jobs back to back in one fused function and leaves it for
the general path on anything but a lone whole JOB_ASSIGN_UNIQ with a small complete result.
A real gearmand (test_native_backend.py) covers results, failures, exceptions, large
results and stops; this peer does what gearmand will not do on demand: withhold the reply
to a grab, send two packets at once, assign a function never registered or a workload over
the limit, or answer a grab with garbage.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from gearman_driver.protocol import REQ, RES, Cmd, Packet, PacketParser, encode_response
from tests.integration.test_native_backend import LOCAL, Worker, echo, workers  # noqa: F401

JOB = encode_response(Cmd.JOB_ASSIGN_UNIQ, b"H:peer:1", b"echo", b"u1", b"payload")


class Peer:
    """One accepted connection from the worker, read through the strict parser."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self.parser = PacketParser(magic=REQ)
        self.pending: list[Packet] = []

    def next(self) -> Packet:
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the worker closed the connection"
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    def expect(self, *cmds: Cmd) -> list[Packet]:
        packets = [self.next() for _ in cmds]
        assert [p.cmd for p in packets] == [int(c) for c in cmds], packets
        return packets

    def register(self) -> None:
        """Answer the hello's ECHO_REQ, then take the first grab."""
        while (packet := self.next()).cmd != Cmd.ECHO_REQ:
            pass
        self.sock.sendall(encode_response(Cmd.ECHO_RES, packet.args[0]))
        self.expect(Cmd.GRAB_JOB_UNIQ)

    def closed(self) -> bool:
        """True once the worker has closed its side (after whatever it still sent)."""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return True
            self.pending.extend(self.parser.feed(data))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind((LOCAL, 0))
    sock.listen(4)
    sock.settimeout(10)
    yield sock
    sock.close()


def start(workers, listener: socket.socket, **kwargs: object) -> tuple[Worker, Peer]:  # noqa: F811
    worker = workers([(LOCAL, listener.getsockname()[1])], {"echo": echo}, **kwargs)
    peer = Peer(listener.accept()[0])
    peer.register()
    return worker, peer


def test_jobs_back_to_back_each_result_with_the_next_grab(workers, listener) -> None:  # noqa: F811
    worker, peer = start(workers, listener)
    for i in range(3):
        peer.sock.sendall(encode_response(Cmd.JOB_ASSIGN_UNIQ, b"H:peer:%d" % i, b"echo", b"",
                                          b"w%d" % i))
        done, _ = peer.expect(Cmd.WORK_COMPLETE, Cmd.GRAB_JOB_UNIQ)
        assert done.args == (b"H:peer:%d" % i, b"w%d" % i)
    peer.sock.sendall(encode_response(Cmd.NO_JOB))  # the general path: sleep, then wake
    peer.expect(Cmd.PRE_SLEEP)
    peer.sock.sendall(encode_response(Cmd.NOOP))
    peer.expect(Cmd.GRAB_JOB_UNIQ)
    assert worker.logs("ERROR") == []


def test_a_job_and_another_packet_in_one_read(workers, listener) -> None:  # noqa: F811
    worker, peer = start(workers, listener)
    peer.sock.sendall(JOB + encode_response(Cmd.NOOP))  # the NOOP is stale: ignored
    done, _ = peer.expect(Cmd.WORK_COMPLETE, Cmd.GRAB_JOB_UNIQ)
    assert done.args == (b"H:peer:1", b"payload")
    peer.sock.sendall(JOB)
    peer.expect(Cmd.WORK_COMPLETE, Cmd.GRAB_JOB_UNIQ)
    assert worker.logs("ERROR") == []


def test_a_stop_while_the_reply_is_withheld_ends_the_worker(workers, listener) -> None:  # noqa: F811
    worker, peer = start(workers, listener)
    worker.stop_flag.set()  # the grab is never answered: recv is bounded, the stop is seen
    worker.proc.join(10)
    assert worker.proc.exitcode == 0
    worker.wait("returned")
    assert peer.closed()


def test_a_job_assigned_after_a_stop_runs_and_nothing_more_is_grabbed(
    workers, listener  # noqa: F811
) -> None:
    worker, peer = start(workers, listener)
    worker.stop_flag.set()
    peer.sock.sendall(JOB)  # gearmand answered the grab in time: the job is ours to run
    (done,) = peer.expect(Cmd.WORK_COMPLETE)
    assert done.args == (b"H:peer:1", b"payload")
    assert peer.closed() and peer.pending == []  # no GRAB_JOB_UNIQ after the result
    worker.proc.join(10)
    assert worker.proc.exitcode == 0


def test_a_function_never_registered_is_failed(workers, listener) -> None:  # noqa: F811
    worker, peer = start(workers, listener)
    peer.sock.sendall(encode_response(Cmd.JOB_ASSIGN_UNIQ, b"H:peer:2", b"other", b"", b"x"))
    failed, _ = peer.expect(Cmd.WORK_FAIL, Cmd.GRAB_JOB_UNIQ)
    assert failed.args == (b"H:peer:2",)
    assert any("unregistered function" in m for m in worker.logs("ERROR"))


def test_a_workload_over_the_limit_is_failed_unrun(workers, listener) -> None:  # noqa: F811
    worker, peer = start(workers, listener, max_workload=4)
    peer.sock.sendall(JOB)  # 7 bytes: fits one read, exceeds the limit
    failed, _ = peer.expect(Cmd.WORK_FAIL, Cmd.GRAB_JOB_UNIQ)  # echo would have completed
    assert failed.args == (b"H:peer:1",)
    peer.sock.sendall(encode_response(Cmd.JOB_ASSIGN_UNIQ, b"H:peer:3", b"echo", b"", b"ok"))
    done, _ = peer.expect(Cmd.WORK_COMPLETE, Cmd.GRAB_JOB_UNIQ)  # the connection stays
    assert done.args == (b"H:peer:3", b"ok")


GARBAGE = {
    "bad-magic": b"HTTP/1.1 400 Bad Request\r\n\r\n",
    "job-missing-an-argument": RES + struct.pack(">II", Cmd.JOB_ASSIGN_UNIQ, 7) + b"H:1\0echo",
    "job-as-a-request": REQ + JOB[4:],
    "server-error": encode_response(Cmd.ERROR, b"ERR", b"something broke"),
    "closed": b"",
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_for_a_grab_closes_and_reconnects(
    workers, listener, kind: str  # noqa: F811
) -> None:
    worker, peer = start(workers, listener, max_backoff=0.2)
    if GARBAGE[kind]:
        peer.sock.sendall(GARBAGE[kind])
    else:
        peer.sock.shutdown(socket.SHUT_WR)
    assert peer.closed()
    again = Peer(listener.accept()[0])  # it reconnects with backoff, and works
    again.register()
    again.sock.sendall(JOB)
    again.expect(Cmd.WORK_COMPLETE, Cmd.GRAB_JOB_UNIQ)
    errors = [m for m in worker.logs("ERROR") if "closing connection" in m]
    assert len(errors) == (0 if kind == "closed" else 1), errors
