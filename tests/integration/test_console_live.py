"""The console inside a running daemon: what operators see and steer, against real gearmand."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from gearman_driver.console.client import query
from tests.gearmand_util import TestClient, free_port, wait_for

PAIR = {"namespaces": ["tw.pair"], "interval": 1}


def ask(port: int, command: str) -> list[str]:
    return query(f"127.0.0.1:{port}", command, timeout=5)


def console_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gearman_driver.console.client", *args],
                          capture_output=True, text=True, timeout=30)


def test_status_and_show_reflect_the_job_table(gearmand, driver_factory) -> None:
    port = free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": port})
    assert driver.wait_registered("alpha.opts", 2)
    with TestClient(gearmand) as client:
        client.submit("alpha.work", b"oops")  # fails: last error recorded
        client.submit("beta.opts", b"")
    rows = {line.split(maxsplit=6)[0]: line.split(maxsplit=6) for line in ask(port, "status")}
    assert sorted(rows) == ["alpha.opts", "alpha.work", "beta.opts"]
    assert rows["alpha.opts"][1:4] == ["2", "6", "2"]
    assert rows["alpha.work"][5] != "1970-01-01T00:00:00"
    assert "ValueError" in rows["alpha.work"][6]
    assert rows["beta.opts"][4] != "1970-01-01T00:00:00"
    shown = ask(port, "show alpha.opts")
    assert shown[0].split()[:4] == ["alpha.opts", "2", "6", "2"]
    pids = sorted(int(cid.split(":")[1]) for cid, fns in driver.workers() if "alpha.opts" in fns)
    assert [int(line) for line in shown[1:]] == pids
    listed = [line.split() for line in ask(port, "ps alpha.opts")]
    assert [int(row[0]) for row in listed] == pids
    assert all(row[1] == "idle" for row in listed)


def test_replies_are_gearman_drivers_bytes(gearmand, driver_factory) -> None:
    """One connection, several commands pipelined, every byte compared: the trailing column
    separator, bare pids under `show`, Perl's error texts, and `quit` closing without a `.`."""
    port = free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": port})
    for name, count in (("alpha.opts", 2), ("alpha.work", 1), ("beta.opts", 1)):
        assert driver.wait_registered(name, count)
    pids = sorted(int(cid.split(":")[1]) for cid, fns in driver.workers() if "alpha.opts" in fns)
    never = "1970-01-01T00:00:00"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"status\nshow alpha.opts\nset_processes alpha.opts ten ten\n"
                     b"set_processes alpha.opts 5 1\nbogus\nquit\nstatus\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.decode() == (
        f"alpha.opts  2  6  2  {never}  {never}  \n"
        f"alpha.work  1  4  1  {never}  {never}  \n"
        f"beta.opts   1  1  1  {never}  {never}  \n"
        ".\n"
        f"alpha.opts  2  6  2  {never}  {never}  \n" + "".join(f"{pid}\n" for pid in pids) +
        ".\n"
        "ERR invalid_value: min_processes must be >= 0\n.\n"
        "ERR invalid_value: max_processes must be greater than min_processes\n.\n"
        "ERR unknown_command: bogus\n.\n"
    )


def test_set_processes_takes_effect_at_once(gearmand, driver_factory) -> None:
    port = free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": port})
    assert driver.wait_registered("alpha.work", 1)
    assert ask(port, "set_processes alpha.work 3 5") == ["OK"]
    started = time.monotonic()
    assert driver.wait_registered("alpha.work", 3, timeout=5)
    assert time.monotonic() - started < 2.0
    assert ask(port, "set_max_processes alpha.work 2") == [
        "ERR invalid_value: max_processes must be greater than min_processes"]
    assert ask(port, "set_min_processes alpha.work 1") == ["OK"]
    assert ask(port, "set_max_processes alpha.work 1") == ["OK"]
    assert driver.wait_registered("alpha.work", 1, timeout=5)
    assert ask(port, "set_processes nope 1 1") == ["ERR invalid_job_name: nope"]



def test_console_limits_last_until_the_next_reload(gearmand, driver_factory) -> None:
    """README: `set_*` changes last until the next reload, which applies the config's limits
    (alpha.opts is declared 2..6, alpha.work 1..4)."""
    port = free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": port})
    assert driver.wait_registered("alpha.opts", 2)

    def limits() -> dict[str, list[str]]:
        return {line.split()[0]: line.split()[1:3] for line in ask(port, "status")}

    assert ask(port, "set_max_processes alpha.opts 3") == ["OK"]
    assert ask(port, "set_min_processes alpha.work 2") == ["OK"]
    assert driver.wait_registered("alpha.work", 2)
    assert limits() == {"alpha.opts": ["2", "3"], "alpha.work": ["2", "4"],
                        "beta.opts": ["1", "1"]}
    driver.rewrite_config({"job_runtime_attributes": {"alpha.opts": {"max_processes": 5}}})
    driver.signal(signal.SIGHUP)
    assert wait_for(lambda: limits() == {"alpha.opts": ["2", "5"], "alpha.work": ["1", "4"],
                                         "beta.opts": ["1", "1"]}, timeout=15)
    assert driver.wait_registered("alpha.work", 1)

def test_kill_and_killall_replace_processes(gearmand, driver_factory) -> None:
    port = free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": port})
    assert driver.wait_registered("alpha.opts", 2) and driver.wait_registered("beta.opts", 1)
    before = {int(cid.split(":")[1]) for cid, fns in driver.workers() if "alpha.opts" in fns}
    victim = min(before)
    assert ask(port, f"kill {victim}") == ["OK"]
    assert wait_for(lambda: victim not in driver.children(), 5)
    assert driver.wait_registered("alpha.opts", 2)
    assert ask(port, "kill 1") == ["ERR invalid_value: the given PID(s) do not belong to us"]
    beta = {int(cid.split(":")[1]) for cid, fns in driver.workers() if "beta.opts" in fns}
    assert ask(port, "killall beta.opts") == ["OK"]
    assert wait_for(lambda: {int(cid.split(":")[1]) for cid, fns in driver.workers()
                             if "beta.opts" in fns}.isdisjoint(beta)
                    and driver.registered("beta.opts") == 1, 5)
    everyone = set(driver.children())
    assert ask(port, "killall *") == ["OK"]
    assert wait_for(lambda: everyone.isdisjoint(driver.children())
                    and len(driver.children()) == len(everyone), 10)


def test_shutdown_command_stops_the_daemon(gearmand, driver_factory) -> None:
    port = free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": port})
    assert driver.wait_registered("beta.opts", 1)
    children = driver.children()
    assert ask(port, "shutdown") == ["OK"]
    assert driver.wait_exit(15) == 0
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in children), 5)


def test_unix_socket_is_private_and_the_client_exit_codes(gearmand, driver_factory,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "console.sock"
    port = free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": port,
                                       "console_socket": str(path)})
    assert driver.wait_registered("beta.opts", 1)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ok = console_cli("--socket", str(path), "status")
    assert ok.returncode == 0 and "beta.opts" in ok.stdout
    err = console_cli("--server", f"127.0.0.1:{port}", "show", "nope")
    assert err.returncode == 1 and "ERR invalid_job_name: nope" in err.stdout
    down = console_cli("--server", f"127.0.0.1:{free_port()}", "status")
    assert down.returncode == 2 and down.stderr.strip()
    assert driver.proc is not None and driver.proc.poll() is None


def test_garbage_on_the_console_leaves_workers_unaffected(gearmand, driver_factory) -> None:
    port = free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": port})
    assert driver.wait_registered("alpha.opts", 2)
    before = sorted(driver.children())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"x" * (1 << 20))
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    assert reply.startswith(b"ERR line_too_long: max 4096 bytes\n.\n")
    crowd = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(70)]
    try:
        # full: each newcomer closes the connection owing its first line longest, politely
        for sock in crowd[:6]:
            assert sock.recv(100).startswith(b"ERR too_many_connections: max 64")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            extra.sendall(b"status\n")
            reply = b""
            while not reply.endswith(b"\n.\n"):
                chunk = extra.recv(65536)
                assert chunk, reply
                reply += chunk
            assert reply.startswith(b"alpha.")
    finally:
        for sock in crowd:
            sock.close()
    assert wait_for(lambda: _answers(port), 5)
    assert sorted(driver.children()) == before
    with TestClient(gearmand) as client:
        assert client.submit("alpha.work", b"0:fine").result == b"0:fine"


def _answers(port: int) -> bool:
    try:
        return bool(ask(port, "status"))
    except OSError:
        return False
