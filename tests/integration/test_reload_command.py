"""`gearman-driver reload` (the unit's ExecReload=) without systemd: it waits for the outcome
of the reload it asked for and fails, with the reason on stderr, when the config is refused."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from gearman_driver.console.client import query
from tests.gearmand_util import TestClient, free_port

PAIR = {"namespaces": ["tw.pair"], "interval": 1}


def reload(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gearman_driver.cli", "reload", *args],
                          capture_output=True, text=True, timeout=60)


def max_of(port: int, job: str) -> int:
    rows = [line.split() for line in query(f"127.0.0.1:{port}", "status", timeout=5)]
    return next(int(row[2]) for row in rows if row[0] == job)


def test_reload_over_the_socket_reports_success_and_refusal(gearmand, driver_factory,
                                                            tmp_path: Path) -> None:
    port, sock = free_port(), str(tmp_path / "console.sock")
    driver = driver_factory(gearmand, {**PAIR, "console_port": port, "console_socket": sock})
    assert driver.wait_registered("alpha.work", 1)
    driver.rewrite_config({"job_runtime_attributes": {"alpha.work": {"max_processes": 7}}})
    done = reload("--socket", sock)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert max_of(port, "alpha.work") == 7  # applied by the time the command returned

    good = driver.config_path.read_text()
    driver.config_path.write_text(good.replace('"max_processes": 7', '"max_processes": "x"'))
    refused = reload("--socket", sock)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith(f"gearman-driver: reload failed: {driver.config_path}:1:")
    assert "max_processes" in refused.stderr
    assert refused.stderr.endswith("; running on the previous configuration\n")
    assert refused.stderr.count("\n") == 1
    assert max_of(port, "alpha.work") == 7
    with TestClient(gearmand) as client:  # the previous configuration still serves
        assert client.submit("alpha.work", b"").final == "complete"

    driver.config_path.write_text(good.replace('"max_processes": 7', '"max_processes": 3'))
    assert reload("--server", f"127.0.0.1:{port}").returncode == 0  # the TCP console too
    assert max_of(port, "alpha.work") == 3


def test_the_console_reply_waits_for_the_reload(gearmand, driver_factory) -> None:
    port = free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": port})
    assert driver.wait_registered("alpha.work", 1)
    driver.rewrite_config({"job_runtime_attributes": {"alpha.work": {"max_processes": 5}}})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"reload\nstatus\n")  # pipelined: status is read only after the reload
        data = b""
        while data.count(b"\n.\n") < 2:
            chunk = conn.recv(65536)
            assert chunk, data
            data += chunk
    first, second = data.decode().split("\n.\n")[:2]
    assert first == "OK"
    assert next(line.split()[2] for line in second.splitlines()
                if line.startswith("alpha.work ")) == "5"
    driver.config_path.write_text("interval: [1\n")
    reply = query(f"127.0.0.1:{port}", "reload", timeout=10)
    assert len(reply) == 1 and reply[0].startswith(
        f"ERR reload_failed: {driver.config_path}:2:1: invalid YAML")


def test_reload_without_a_daemon_exits_2(tmp_path: Path) -> None:
    result = reload("--socket", str(tmp_path / "nothing.sock"))
    assert result.returncode == 2 and "cannot reach" in result.stderr
    assert reload("--socket", "a", "--server", "b").returncode == 64


def test_a_client_that_half_closes_still_gets_the_outcome(gearmand, driver_factory) -> None:
    """`printf reload | nc`: the reply comes after the client's EOF, once reloaded (new
    worker_options: the new worker objects are built in a trial process first, which takes a
    while)."""
    port = free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": port})
    assert driver.wait_registered("alpha.work", 1)
    driver.rewrite_config({"worker_options": {"GLOBAL": {"v": 2}}})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"reload")  # no newline: the EOF ends the line
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    assert data == b"OK\n.\n"
