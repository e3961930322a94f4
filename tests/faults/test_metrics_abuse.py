"""The metrics endpoint against a client that wants to hurt (issue 21, items 10 and 11, and the
8 KiB promise): pipelined HEADs no longer hold the master's loop hostage, a bad Accept header
no longer costs a 500 and a traceback in the log per request, a request head over 8 KiB gets
431 however it arrives."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.driver_util import FIXTURES, DriverProcess
from tests.faults.faultutil import console_config, record_figures
from tests.faults.workercode import write_module
from tests.gearmand_util import free_port

pytestmark = pytest.mark.slow

JOB = "m.run"


#: Jobs of the wide worker below: each costs a scrape some 30 samples, so that rendering the
#: exposition takes the master tens of milliseconds, as on a large installation.
WIDE_JOBS = 300


def _wide_worker() -> str:
    methods = "".join(f"""
        @job(min_processes=0, max_processes=2)
        def w{i}(self, job, workload):
            return workload
""" for i in range(WIDE_JOBS))
    return f"""
    from gearman_driver import Worker, job

    class Wide(Worker):
        prefix = "wide."
{methods}
"""


@pytest.fixture
def metrics_driver(tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]
                   ) -> tuple[DriverProcess, int, int]:
    lib = tmp_path / "lib"
    write_module(lib, "wide.mod", _wide_worker())
    console_port, config = console_config()
    metrics = free_port()
    driver = driver_factory(gearmand, {"namespaces": ["tw.metrics", "wide"],
                                       "lib": [str(lib), str(FIXTURES)],
                                       "metrics_port": metrics, **config})
    assert driver.wait_registered(JOB, 1)
    return driver, metrics, console_port


class Pipeliner:
    """Sends HEAD /metrics requests back to back on one connection and reads the answers."""

    def __init__(self, port: int, batch: int = 2000) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.batch = batch
        self.answers = 0
        self.stop = threading.Event()
        self.sender = threading.Thread(target=self._send, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> Pipeliner:
        self.sender.start()
        self.reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sender.join(10)
        self.sock.close()
        self.reader.join(10)

    def _send(self) -> None:
        request = b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * self.batch
        try:
            while not self.stop.is_set():
                self.sock.sendall(request)
        except OSError:
            pass

    def _read(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                self.answers += data.count(b"HTTP/1.1 200 OK")
        except OSError:
            pass


def test_pipelined_heads_do_not_stall_the_console(
        metrics_driver: tuple[DriverProcess, int, int]) -> None:
    driver, metrics, console_port = metrics_driver
    from tests.faults.faultutil import console

    worst = 0.0
    with Pipeliner(metrics) as flood:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            started = time.monotonic()
            reply = console(console_port, "status", timeout=3.0)  # a timeout fails the test
            worst = max(worst, time.monotonic() - started)
            assert any(line.startswith("m.work") for line in reply)
        answered = flood.answers
    assert answered > 100  # the flood was being served all along, not shut out
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=3) as reply:
        assert reply.status == 200
    record_figures("metrics HEAD pipelining", sent=0, completed=0, failed=0, lost=0,
                   recover_s=None, peak_rss_kb=None,
                   notes=f"{answered} HEADs answered in 5 s; console status worst "
                         f"{worst:.3f} s")


def test_a_bad_accept_header_gets_the_text_format_and_no_traceback(
        metrics_driver: tuple[DriverProcess, int, int]) -> None:
    driver, metrics, _ = metrics_driver
    for _ in range(20):
        request = urllib.request.Request(
            f"http://127.0.0.1:{metrics}/metrics",
            headers={"Accept": "application/openmetrics-text; version=abc"})
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert b"gearman_driver_processes" in reply.read()
    assert "Traceback" not in driver.log()
    assert "collecting failed" not in driver.log()


@pytest.mark.parametrize("pieces", [1, 3], ids=["whole", "in pieces"])
def test_a_request_head_over_8_kib_is_431(metrics_driver: tuple[DriverProcess, int, int],
                                          pieces: int) -> None:
    _, metrics, _ = metrics_driver
    head = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", metrics), timeout=5) as sock:
        step = len(head) // pieces + 1
        for at in range(0, len(head), step):
            sock.sendall(head[at:at + step])
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            assert chunk, "closed without an answer"
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 431 ")
