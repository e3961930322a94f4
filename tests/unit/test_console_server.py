"""ConsoleServer over real sockets, driven by a selector loop like the master's.

After every abuse the server must still answer ``status``: no input may crash the loop,
stall it, or grow memory without bound.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearman_driver.console import server as console_module
from gearman_driver.console.commands import COMMANDS
from gearman_driver.console.server import (
    MAX_CONNECTIONS,
    MAX_LINE,
    OUTPUT_HIGH_WATER,
    RECV_SIZE,
    ConsoleServer,
)
from tests.unit.test_console_commands import SHOW_A, STATUS
from tests.unit.test_console_support import (
    Client,
    Job,
    Loop,
    MemoryController,
    start_server,
    stop_server,
    wait_for,
)


@pytest.fixture
def ctl() -> MemoryController:
    return MemoryController()


@pytest.fixture
def console(ctl: MemoryController) -> Iterator[ConsoleServer]:
    server, loop = start_server(ctl)
    yield server
    stop_server(server, loop)


def healthy(server: ConsoleServer) -> None:
    c = Client(server.address)
    try:
        assert c.ask("status") == STATUS
    finally:
        c.close()


def test_status_show_help_over_tcp(console: ConsoleServer) -> None:
    c = Client(console.address)
    assert c.ask("status") == STATUS
    assert c.ask("show a") == [SHOW_A]
    assert c.ask("show nope") == ["ERR invalid_job_name: nope"]
    assert len(c.ask("help")) == len(COMMANDS)
    c.close()


def test_commands_change_the_controller(console: ConsoleServer, ctl: MemoryController) -> None:
    c = Client(console.address)
    assert c.ask("set_processes a 2 3") == ["OK"]
    assert (ctl.jobs["a"].min_processes, ctl.jobs["a"].max_processes) == (2, 3)
    assert c.ask("kill 4711") == ["OK"]
    assert c.ask("kill 1") == ["ERR invalid_value: the given PID(s) do not belong to us"]
    assert c.ask("killall *") == ["OK"]
    assert c.ask("shutdown") == ["OK"]
    assert ctl.shutdown_requested


def test_crlf_blank_lines_pipelining(console: ConsoleServer) -> None:
    c = Client(console.address)
    c.send(b"\r\n\n   \nshow a\r\nbogus\nstat")
    assert c.reply() == [SHOW_A]
    assert c.reply() == ["ERR unknown_command: bogus"]
    c.send(b"us\n")
    assert c.reply() == STATUS


def test_quit_closes_without_reply(console: ConsoleServer) -> None:
    c = Client(console.address)
    c.send("quit\nstatus\n")
    assert c.closed() and c.buf == b""
    c.close()
    assert wait_for(lambda: console.connection_count == 0)


def test_last_line_without_newline_is_answered_at_eof(console: ConsoleServer) -> None:
    c = Client(console.address)
    c.send("show a")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.reply() == [SHOW_A]
    assert c.closed()


def test_invalid_utf8_keeps_connection(console: ConsoleServer) -> None:
    c = Client(console.address)
    c.send(b"\xc3\x28 status\n")
    assert c.reply() == ["ERR invalid_encoding: commands are UTF-8"]
    assert c.ask("status") == STATUS


def test_internal_error(console: ConsoleServer, ctl: MemoryController,
                        caplog: pytest.LogCaptureFixture) -> None:
    c = Client(console.address)
    ctl.fail = KeyError("x")
    assert c.ask("status") == ["ERR internal_error: KeyError: 'x'"]
    ctl.fail = None
    assert c.ask("status") == STATUS
    assert any(r.exc_info for r in caplog.records)


def test_max_length_line_is_accepted(console: ConsoleServer) -> None:
    c = Client(console.address)
    word = "x" * 4096
    assert c.ask(word) == [f"ERR unknown_command: {word}"]
    assert c.ask(word + "\r") == [f"ERR unknown_command: {word}"]  # CR is not counted


@pytest.mark.parametrize("newline", [b"", b"\n"])
def test_one_mib_line(console: ConsoleServer, newline: bytes) -> None:
    c = Client(console.address)
    try:
        c.send(b"y" * (1 << 20) + newline)
    except OSError:
        pass  # the server may hang up before taking it all; the reply is what matters
    assert c.reply() == ["ERR line_too_long: max 4096 bytes"]
    assert c.closed()
    c.close()
    healthy(console)
    assert wait_for(lambda: console.connection_count == 0)


def test_fifty_concurrent_clients(console: ConsoleServer) -> None:
    failures: list[BaseException] = []
    barrier = threading.Barrier(50)

    def one(i: int) -> None:
        try:
            c = Client(console.address, timeout=20)
            barrier.wait(10)
            for _ in range(5):
                assert c.ask("status") == STATUS
                assert c.ask(f"show nope{i}") == [f"ERR invalid_job_name: nope{i}"]
            c.close()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures


def test_a_full_listener_makes_room_for_a_newcomer(console: ConsoleServer) -> None:
    """Each newcomer to a full console closes the connection idle longest, with a last ERR."""
    clients = [Client(console.address) for _ in range(MAX_CONNECTIONS)]
    for c in clients:
        assert c.ask("show a") == [SHOW_A]
    for i in range(3):
        newcomer = Client(console.address)
        assert newcomer.ask("show a") == [SHOW_A]
        assert clients[i].reply() == [f"ERR too_many_connections: max {MAX_CONNECTIONS}"]
        assert clients[i].closed()
        clients.append(newcomer)
    assert console.connection_count == MAX_CONNECTIONS
    clients.pop().send("quit\n")
    assert wait_for(lambda: console.connection_count == MAX_CONNECTIONS - 1)
    healthy(console)
    for c in clients:
        c.close()


def test_a_connection_owing_a_line_goes_first(console: ConsoleServer) -> None:
    owing = Client(console.address)
    owing.send("sta")  # half a line, then nothing
    clients = [Client(console.address) for _ in range(MAX_CONNECTIONS - 1)]
    for c in clients:
        assert c.ask("show a") == [SHOW_A]
    newcomer = Client(console.address)
    assert newcomer.ask("show a") == [SHOW_A]
    assert owing.reply() == [f"ERR too_many_connections: max {MAX_CONNECTIONS}"]
    assert owing.closed()
    assert clients[0].ask("show a") == [SHOW_A]  # the one idle longest stayed
    for c in [*clients, newcomer]:
        c.close()


@pytest.mark.parametrize("sent", [b"", b"stat", b"status\nsho"])
def test_a_line_not_finished_in_time_closes_the_connection(
        ctl: MemoryController, monkeypatch: pytest.MonkeyPatch, sent: bytes) -> None:
    monkeypatch.setattr(console_module, "LINE_TIMEOUT", 0.5)
    server, loop = start_server(ctl)
    try:
        c = Client(server.address)
        c.send(sent)
        if sent.startswith(b"status"):
            assert c.reply() == STATUS
        assert c.reply() == ["ERR line_timeout: no complete line within 0.5 s"]
        assert c.closed()
        healthy(server)
        patient = Client(server.address)  # sends lines, then idles: not owing anything
        assert patient.ask("show a") == [SHOW_A]
        time.sleep(1.0)  # twice the line timeout: the idle client must survive it
        assert patient.ask("show a") == [SHOW_A]
        patient.close()
    finally:
        stop_server(server, loop)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=6000))
def test_random_bytes(console: ConsoleServer, junk: bytes) -> None:
    c = Client(console.address)
    try:
        c.send(junk + b"\n")
    except OSError:
        pass
    c.close()
    healthy(console)


def test_client_that_never_reads_is_throttled_then_closed(ctl: MemoryController) -> None:
    ctl.jobs.update({f"job{i:04d}": Job(0, 1) for i in range(300)})  # ~20 KB per status
    server, loop = start_server(ctl, idle_timeout=1.0)
    try:
        lazy = socket.create_connection(server.address)
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.settimeout(0.2)
        sent = 0
        try:
            while sent < 20_000:  # ~400 MB of replies if the server answered them all
                lazy.send(b"status\n" * 100)
                sent += 100
        except (TimeoutError, OSError):
            pass  # the server stopped reading: back-pressure, not buffering
        for conn in list(server.conns):
            assert len(conn.outbuf) <= OUTPUT_HIGH_WATER + 25_000  # one reply past the mark
            assert len(conn.inbuf) <= MAX_LINE + 1 + RECV_SIZE
        c = Client(server.address)
        assert len(c.ask("status")) == 303
        c.close()
        assert wait_for(lambda: server.connection_count == 0)  # idle timeout
    finally:
        stop_server(server, loop)


def test_reply_over_output_limit_closes(ctl: MemoryController,
                                        caplog: pytest.LogCaptureFixture) -> None:
    ctl.jobs.update({f"job{i:06d}" + "x" * 150: Job(0, 1) for i in range(40_000)})
    server, loop = start_server(ctl)
    try:
        lazy = socket.create_connection(server.address)
        lazy.send(b"status\n")
        assert wait_for(lambda: "unread, closing" in caplog.text)
        assert wait_for(lambda: server.connection_count == 0)
        c = Client(server.address)
        assert c.ask("show a")[0].split()[:4] == ["a", "0", "1", "0"]
    finally:
        stop_server(server, loop)


def test_idle_timeout(ctl: MemoryController, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server, loop = start_server(ctl, idle_timeout=0.3)
    try:
        c = Client(server.address)
        assert c.ask("show a") == [SHOW_A]
        assert c.closed()
        assert "idle for" in caplog.text
    finally:
        stop_server(server, loop)


def test_unix_socket(ctl: MemoryController, tmp_path: Path) -> None:
    path = str(tmp_path / "console.sock")
    server, loop = start_server(ctl, port=None, socket_path=path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        c = Client(path)
        assert c.ask("status") == STATUS
        c.close()
        with pytest.raises(OSError, match="in use"):
            ConsoleServer(ctl, selectors.DefaultSelector(), port=None, socket_path=path).open()
    finally:
        stop_server(server, loop)
    assert not os.path.exists(path)


def test_unix_socket_stale_file_replaced_and_regular_file_refused(
    ctl: MemoryController, tmp_path: Path
) -> None:
    path = str(tmp_path / "console.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # leaves the file, nobody listening
    os.chmod(path, 0o666)
    server, loop = start_server(ctl, port=None, socket_path=path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stop_server(server, loop)
    Path(path).write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        ConsoleServer(ctl, selectors.DefaultSelector(), port=None, socket_path=path).open()
    assert Path(path).read_text() == "not a socket"


def test_tcp_and_unix_together(ctl: MemoryController, tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    server, loop = start_server(ctl, socket_path=path)
    try:
        assert Client(path).ask("show a") == Client(server.address).ask("show a")
    finally:
        stop_server(server, loop)


def test_warns_when_not_loopback(ctl: MemoryController, caplog: pytest.LogCaptureFixture) -> None:
    server, loop = start_server(ctl, host="0.0.0.0")
    stop_server(server, loop)
    assert "console has no authentication; listening on 0.0.0.0" in caplog.text
    caplog.clear()
    server, loop = start_server(ctl, host="localhost")
    stop_server(server, loop)
    assert "no authentication" not in caplog.text


def test_port_in_use_leaves_nothing_open(ctl: MemoryController, tmp_path: Path) -> None:
    server, loop = start_server(ctl)
    try:
        other = ConsoleServer(ctl, selectors.DefaultSelector(), port=server.address[1],
                              socket_path=str(tmp_path / "x.sock"))
        with pytest.raises(OSError):
            other.open()
        assert not (tmp_path / "x.sock").exists()
    finally:
        stop_server(server, loop)


def test_close_in_child_leaves_parent_serving(ctl: MemoryController, tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    sel = selectors.DefaultSelector()
    server = ConsoleServer(ctl, sel, port=0, socket_path=path)
    server.open()
    c = Client(server.address)
    sel.select(0.5)[0][0].data(selectors.EVENT_READ)  # accept c in the "master"
    assert server.connection_count == 1
    pid = os.fork()
    if pid == 0:  # child: must not touch the shared epoll set, the socket file or c
        try:
            server.close_in_child()
            os._exit(0 if server.connection_count == 0 else 1)
        finally:
            os._exit(2)
    assert os.waitpid(pid, 0)[1] == 0
    loop = Loop(server, sel).start()
    try:
        assert os.path.exists(path)
        assert c.ask("status") == STATUS
        assert Client(path).ask("show a") == [SHOW_A]
    finally:
        stop_server(server, loop)


def test_accept_pauses_when_out_of_fds(ctl: MemoryController,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """EMFILE leaves the listener readable: without a pause the loop would spin on it."""
    sel = selectors.DefaultSelector()
    server = ConsoleServer(ctl, sel, port=0)
    server.open()
    listener = server._listeners[0]
    real = listener.sock

    class Exhausted:
        def fileno(self) -> int:
            return real.fileno()

        def accept(self) -> None:
            raise OSError(errno.EMFILE, "Too many open files")

    try:
        listener.sock = Exhausted()  # type: ignore[assignment]
        c = Client(server.address)
        key, mask = sel.select(1)[0]
        key.data(mask)
        assert "cannot accept" in caplog.text and sel.select(0.05) == []
        listener.sock = real
        server.tick(time.monotonic() + 2)
        key, mask = sel.select(1)[0]
        key.data(mask)
        assert server.connection_count == 1
        c.close()
    finally:
        server.close()
        sel.close()
