"""`gearman-driver-console` against a real ConsoleServer: output, prefixes and exit codes."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gearman_driver.console.client import main, parse_console_address
from gearman_driver.console.server import ConsoleServer
from tests.unit.test_console_commands import SHOW_A, STATUS
from tests.unit.test_console_support import MemoryController, start_server, stop_server


@pytest.fixture
def ctl() -> MemoryController:
    return MemoryController()


@pytest.fixture
def server(ctl: MemoryController, tmp_path: Path) -> Iterator[ConsoleServer]:
    srv, loop = start_server(ctl, socket_path=str(tmp_path / "console.sock"))
    yield srv
    stop_server(srv, loop)


def addr(server: ConsoleServer) -> str:
    host, port = server.address
    return f"{host}:{port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_shot_ok(server: ConsoleServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", addr(server), "status"]) == 0
    assert capsys.readouterr().out.splitlines() == STATUS


def test_one_shot_ps_and_show_keep_every_byte(server: ConsoleServer,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", addr(server), "ps", "My::Workers::Two::scale_image"]) == 0
    assert capsys.readouterr().out == " 815  idle     7  -\n4711  busy  1234  3\n"
    assert main(["--server", addr(server), "show", "a"]) == 0
    assert capsys.readouterr().out == SHOW_A + "\n"  # the trailing separator survives


def test_one_shot_words_are_one_command(
    server: ConsoleServer, ctl: MemoryController, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--server", addr(server), "set_processes", "a", "1", "4"]) == 0
    assert capsys.readouterr().out == "OK\n"
    assert (ctl.jobs["a"].min_processes, ctl.jobs["a"].max_processes) == (1, 4)


def test_one_shot_err_exits_1(server: ConsoleServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", addr(server), "show", "nope"]) == 1
    assert capsys.readouterr().out == "ERR invalid_job_name: nope\n"


def test_unreachable_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["--server", f"127.0.0.1:{port}", "status"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "refused" in err.lower()


def test_two_servers_prefix_each_line(
    server: ConsoleServer, ctl: MemoryController, capsys: pytest.CaptureFixture[str]
) -> None:
    other, loop = start_server(MemoryController({}))
    second = addr(other)
    try:
        assert main(["--server", f"{addr(server)} {second}", "show", "a"]) == 1
    finally:
        stop_server(other, loop)
    assert capsys.readouterr().out.splitlines() == [
        f"{addr(server)}> {SHOW_A}",
        f"{second}> ERR invalid_job_name: a",
    ]


def test_one_of_two_unreachable_exits_2(
    server: ConsoleServer, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    assert main(["--server", f"{dead},{addr(server)}", "show", "a"]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{addr(server)}> {SHOW_A}"]
    assert dead in err


def test_unix_socket(server: ConsoleServer, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--socket", str(tmp_path / "console.sock"), "status"]) == 0
    assert capsys.readouterr().out.splitlines() == STATUS


def test_quit_one_shot(server: ConsoleServer) -> None:
    assert main(["--server", addr(server), "quit"]) == 0


@pytest.mark.parametrize(
    "argv",
    [["--server", "host:notaport", "status"], ["--server", "host:70000", "status"],
     ["--bogus"], ["--server", "[::1", "status"], ["status\nshutdown"], ["--timeout", "0", "x"]],
)
def test_usage_errors_exit_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 64
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--server" in capsys.readouterr().out


def test_parse_console_address() -> None:
    assert parse_console_address("h").label == "h:47300"
    assert (parse_console_address("h:1").host, parse_console_address("h:1").port) == ("h", 1)
    assert parse_console_address("[::1]:5").label == "[::1]:5"
    assert parse_console_address("::1").host == "::1"


def test_interactive(server: ConsoleServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    history = tmp_path / "history"
    monkeypatch.setenv("GEARMAN_DRIVER_HISTORY", str(history))
    monkeypatch.setattr("sys.stdin", io.StringIO("status\n\nshow nope\nquit\nstatus\n"))
    assert main(["--server", addr(server)]) == 0
    out = capsys.readouterr().out
    assert out.count(STATUS[0]) == 1  # nothing after quit
    assert "ERR invalid_job_name: nope" in out
    assert "show nope" in history.read_text()


def test_interactive_eof_and_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GEARMAN_DRIVER_HISTORY", str(tmp_path / "h"))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["--server", f"127.0.0.1:{free_port()}"]) == 2


def test_interactive_reconnects_after_idle_close(
    ctl: MemoryController, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    srv, loop = start_server(ctl, idle_timeout=0.2)
    lines = iter(["show a", "show a"])

    def slow_input(prompt: str = "") -> str:
        import time

        time.sleep(0.5)  # the server drops us meanwhile
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setenv("GEARMAN_DRIVER_HISTORY", str(tmp_path / "h"))
    monkeypatch.setattr("builtins.input", slow_input)
    try:
        assert main(["--server", addr(srv)]) == 0
    finally:
        stop_server(srv, loop)
    assert capsys.readouterr().out.count(SHOW_A) == 2
