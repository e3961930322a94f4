"""Every reload request gets a true answer, and a reload that answers OK applied what it said
(issue 21, items 4 and 5).

Found before: a reload that moved the console had its connection closed before the reply, so
`gearman-driver reload` exited 2 ("cannot reach") although the reload was applied, and
`systemctl reload` reported a failure; a reload that moved `metrics_port` onto a busy port
answered OK, closed the old endpoint and never opened the new one."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.faults.faultutil import console
from tests.gearmand_util import free_port, wait_for

pytestmark = pytest.mark.slow

PAIR = {"namespaces": ["tw.pair"]}


def reload(*where: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gearman_driver.cli", "reload", *where,
                           "--timeout", "60"], capture_output=True, text=True, timeout=90)


def scrape_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as reply:
            return reply.status == 200 and b"gearman_driver_processes" in reply.read()
    except (urllib.error.URLError, OSError):
        return False


def refused_connection(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port someone else listens on."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def test_a_reload_that_moves_the_tcp_console_is_answered_on_the_old_connection(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    old, new = free_port(), free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": old})
    assert driver.wait_registered("alpha.work", 1)
    driver.rewrite_config({"console_port": new})
    done = reload("--server", f"127.0.0.1:{old}")
    assert (done.returncode, done.stderr) == (0, ""), driver.log()[-2000:]
    assert any(line.startswith("alpha.work") for line in console(new, "status"))
    assert refused_connection(old)


def test_a_reload_that_moves_the_unix_console_is_answered_on_the_old_connection(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    old, new = tmp_path / "old.sock", tmp_path / "new.sock"
    driver = driver_factory(gearmand, {**PAIR, "console_port": 0, "console_socket": str(old)})
    assert driver.wait_registered("alpha.work", 1)
    driver.rewrite_config({"console_socket": str(new)})
    done = reload("--socket", str(old))
    assert (done.returncode, done.stderr) == (0, ""), driver.log()[-2000:]
    assert new.is_socket() and not old.exists()
    again = reload("--socket", str(new))  # and the new one works
    assert again.returncode == 0, again.stderr


def test_a_reload_that_switches_the_console_off_is_answered(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    port = free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": port})
    assert driver.wait_registered("alpha.work", 1)
    driver.rewrite_config({"console_port": 0})
    done = reload("--server", f"127.0.0.1:{port}")
    assert (done.returncode, done.stderr) == (0, ""), driver.log()[-2000:]
    assert refused_connection(port)


def test_moving_metrics_onto_a_busy_port_is_refused_and_the_old_endpoint_stays(
        gearmand: int, driver_factory: Callable[..., DriverProcess], busy_port: int) -> None:
    console_port, metrics = free_port(), free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": console_port,
                                       "metrics_port": metrics})
    assert driver.wait_registered("alpha.work", 1)
    assert scrape_ok(metrics)
    driver.rewrite_config({"metrics_port": busy_port})
    done = reload("--server", f"127.0.0.1:{console_port}")
    assert done.returncode == 1, (done.stderr, driver.log()[-2000:])
    assert done.stderr.startswith(f"gearman-driver: reload failed: {driver.config_path}:1:")
    assert f": metrics_port {busy_port} on 127.0.0.1: Address already in use;" in done.stderr
    assert done.stderr.endswith("; running on the previous configuration\n")
    assert scrape_ok(metrics)  # the old endpoint still serves


def test_moving_metrics_to_a_free_port_moves_it(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    console_port, old, new = free_port(), free_port(), free_port()
    driver = driver_factory(gearmand, {**PAIR, "console_port": console_port,
                                       "metrics_port": old})
    assert driver.wait_registered("alpha.work", 1)
    driver.rewrite_config({"metrics_port": new})
    done = reload("--server", f"127.0.0.1:{console_port}")
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: scrape_ok(new), 5)
    assert refused_connection(old)
