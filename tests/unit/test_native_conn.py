"""The backends' connect: every address of a name in turn, a silent one left behind after
`keepalive` seconds, the keepalive options on every socket, never a blocking call.

A real black hole on loopback: a listener with a full accept queue drops further SYNs, so a
connect to it neither succeeds nor fails. Only the resolver is stubbed, to put that address
before a listening one.
"""

from __future__ import annotations

import selectors
import socket
import time

import pytest

from gearman_driver.child.backends import connecting
from gearman_driver.child.backends.connecting import Connector
from gearman_driver.child.backends.native_conn import REGISTERING, ServerConnection
from gearman_driver.keepalive import probes
from tests.gearmand_util import black_hole


def test_a_silent_address_is_left_for_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    with black_hole() as silent, socket.socket() as good:
        good.bind(("127.0.0.1", 0))
        good.listen(1)
        infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", addr)
                 for addr in (silent, good.getsockname())]
        monkeypatch.setattr(connecting.socket, "getaddrinfo", lambda *args: infos)
        with selectors.DefaultSelector() as sel:
            conn = ServerConnection(("dual", 4730), sel, max_backoff=1.0, max_packet=1 << 20,
                                    write_timeout=1.0, keepalive=0.3)
            conn.start_connect()
            deadline = time.monotonic() + 10
            while conn.state != REGISTERING and time.monotonic() < deadline:
                if conn.connector.deadline <= time.monotonic():
                    conn.connect_timed_out()
                for _key, _mask in sel.select(0.05):
                    conn.finish_connect()
            assert conn.state == REGISTERING
            assert conn.sock is not None and conn.sock.getpeername() == good.getsockname()
            assert conn.connector.errors == [(f"127.0.0.1:{silent[1]}", "no answer in 0.3 s")]
            conn.close()


def test_every_address_refusing_is_one_error_naming_each(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    infos = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", ports[0], 0, 0)),
             (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", ports[1]))]
    monkeypatch.setattr(connecting.socket, "getaddrinfo", lambda *args: infos)
    with selectors.DefaultSelector() as sel:
        conn = ServerConnection(("dual", 4730), sel, max_backoff=1.0, max_packet=1 << 20,
                                write_timeout=1.0, keepalive=60)
        with pytest.raises(OSError) as failed:
            conn.start_connect()
            while True:
                for _key, _mask in sel.select(5):
                    conn.finish_connect()
        assert str(failed.value) == (f"[::1]:{ports[0]}: Connection refused; "
                                     f"127.0.0.1:{ports[1]}: Connection refused")
        conn.close()


def test_a_blocking_read_is_bounded_by_the_kernel() -> None:
    """One server: replies are awaited by a blocking recv (no selector call per job), which
    must still give up after its time-out, so a stop request is looked at."""
    left, right = socket.socketpair()
    with left, right, selectors.DefaultSelector() as sel:
        conn = ServerConnection(("one", 4730), sel, max_backoff=1.0, max_packet=1 << 20,
                                write_timeout=1.0, keepalive=60)
        conn.sock = left
        conn.block_reads(0.05)
        assert left.getblocking()
        assert conn.read() == []  # nothing came: back after the time-out, not stuck
        right.sendall(b"\0RES\0\0\0\x06\0\0\0\0")  # NOOP
        assert [packet.cmd for packet in conn.read()] == [6]
        conn.sock = None


@pytest.mark.parametrize("keepalive", [2, 60])
def test_every_socket_is_probed_as_keepalive_says(keepalive: float) -> None:
    """What the kernel is told: probes after `keepalive` s of silence, then every third of
    it, and the connection dropped after 3 × `keepalive` s without an answer."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        connector = Connector(server.getsockname(), keepalive)
        connector.begin()
        deadline = time.monotonic() + 5
        while not connector.poll(time.monotonic()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with connector.take() as sock:
            assert not sock.getblocking()
            option = sock.getsockopt
            assert option(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            idle = option(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            interval = option(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
            count = option(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
            assert idle == keepalive
            assert idle + interval * count == 3 * keepalive
            assert option(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 3000 * keepalive
            assert probes(keepalive) == (idle, interval, count, 3000 * keepalive)


def test_keepalive_zero_leaves_probing_off() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        connector = Connector(server.getsockname(), 0)
        connector.begin()
        assert connector.sock is not None
        assert connector.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        assert connector.timeout == 10  # a connect is still bounded
        connector.close()


def test_poll_never_blocks_on_a_silent_server() -> None:
    """The pygearman backend's way: each poll is one non-blocking step; a silent address is
    given up on after `keepalive` s (the only wait is the caller's)."""
    with black_hole() as silent:
        connector = Connector(silent, 0.5)
        connector.begin()
        assert connector.sock is not None and not connector.sock.getblocking()
        polls = 0
        with pytest.raises(ConnectionError, match="no answer in 0.5 s"):
            while True:
                assert not connector.poll(time.monotonic())
                polls += 1
                time.sleep(0.02)
        assert polls > 1  # each step returned at once: the address was given up on later
