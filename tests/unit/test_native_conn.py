"""The native backend's connect: every address of a name in turn, a silent one left behind.

A real black hole on loopback: a listener with a full accept queue drops further SYNs, so a
connect to it neither succeeds nor fails. Only the resolver is stubbed, to put that address
before a listening one.
"""

from __future__ import annotations

import selectors
import socket
import time

import pytest

from gearman_driver.child.backends import native_conn
from gearman_driver.child.backends.native_conn import REGISTERING, ServerConnection


def test_a_silent_address_is_left_for_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent, socket.socket() as good:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for sock in fillers:  # fill the accept queue; later SYNs are dropped
            sock.setblocking(False)
            sock.connect_ex(silent.getsockname())
        good.bind(("127.0.0.1", 0))
        good.listen(1)
        infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", addr)
                 for addr in (silent.getsockname(), good.getsockname())]
        monkeypatch.setattr(native_conn.socket, "getaddrinfo", lambda *args: infos)
        monkeypatch.setattr(native_conn, "CONNECT_TIMEOUT", 0.3)
        with selectors.DefaultSelector() as sel:
            conn = ServerConnection(("dual", 4730), sel, max_backoff=1.0, max_packet=1 << 20,
                                    write_timeout=1.0)
            conn.start_connect()
            deadline = time.monotonic() + 10
            while conn.state != REGISTERING and time.monotonic() < deadline:
                if conn.connect_by <= time.monotonic():
                    conn.connect_timed_out()
                for _key, _mask in sel.select(0.05):
                    conn.finish_connect()
            assert conn.state == REGISTERING
            assert conn.sock is not None and conn.sock.getpeername() == good.getsockname()
            assert conn.errors == [(f"127.0.0.1:{silent.getsockname()[1]}", "no answer in 0.3 s")]
            conn.close()
        for sock in fillers:
            sock.close()


def test_every_address_refusing_is_one_error_naming_each(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    infos = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", ports[0], 0, 0)),
             (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", ports[1]))]
    monkeypatch.setattr(native_conn.socket, "getaddrinfo", lambda *args: infos)
    with selectors.DefaultSelector() as sel:
        conn = ServerConnection(("dual", 4730), sel, max_backoff=1.0, max_packet=1 << 20,
                                write_timeout=1.0)
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
                                write_timeout=1.0)
        conn.sock = left
        conn.block_reads(0.05)
        assert left.getblocking()
        assert conn.read() == []  # nothing came: back after the time-out, not stuck
        right.sendall(b"\0RES\0\0\0\x06\0\0\0\0")  # NOOP
        assert [packet.cmd for packet in conn.read()] == [6]
        conn.sock = None
