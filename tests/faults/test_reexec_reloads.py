"""A reload that re-executes the master starts the new master from what it checked, and every
reload request around it gets a true answer (issue 21, items 1 and 4).

Found before: a reload that re-executes the master (here: worker code changed) answered OK and
drained; when the config file was broken during that drain the new master read it, exited 78
and the service was gone. `gearman-driver reload` sent while a re-exec drained had its
connection closed and exited 2; a reload still pending when SIGTERM arrived was never
answered; `reload` during shutdown answered OK."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.faults.faultutil import console_config
from tests.faults.workercode import write_module
from tests.gearmand_util import JobOutcome, TestClient, running, wait_for

pytestmark = pytest.mark.slow

SLOW = """
    import time
    from gearman_driver import Worker, job

    class Slow(Worker):
        prefix = "rx."

        @job(min_processes=1, max_processes=1)
        def run(self, job, workload):
            time.sleep(float(workload or 0))
            return VERSION

    VERSION = "{version}"
"""

DRAINING = "the new worker code loads: re-executing the master"


class Reload:
    """`gearman-driver reload` running in the background."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gearman_driver.cli", "reload", "--server",
             f"127.0.0.1:{port}", "--timeout", "90"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)

    def result(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, err


class SlowJob:
    """A foreground job that keeps a process busy (so a drain takes that long)."""

    def __init__(self, gearmand: int, seconds: float) -> None:
        self.outcome: JobOutcome | None = None

        def run() -> None:
            with TestClient(gearmand, timeout=120) as client:
                self.outcome = client.submit("rx.run", str(seconds).encode())

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def result(self) -> bytes:
        self.thread.join(120)
        assert self.outcome is not None
        return self.outcome.result


def start(tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]
          ) -> tuple[DriverProcess, int, Path]:
    lib = tmp_path / "lib"
    code = write_module(lib, "slowpkg.mod", SLOW.replace("{version}", "1"))
    port, console_keys = console_config()
    driver = driver_factory(gearmand, {"namespaces": ["slowpkg"], "lib": [str(lib)],
                                       "graceful_timeout": 60, **console_keys})
    assert driver.wait_registered("rx.run", 1)
    return driver, port, code


def version(gearmand: int) -> bytes:
    with TestClient(gearmand) as client:
        return client.submit("rx.run", b"").result


def drain_with_new_code(driver: DriverProcess, gearmand: int, port: int, code: Path,
                        seconds: float = 4) -> tuple[SlowJob, Reload]:
    """Start a slow job, deploy version 2 and ask for a reload: it re-executes the master
    once the slow job is done; returns when the drain has begun."""
    job = SlowJob(gearmand, seconds)
    assert wait_for(lambda: running(gearmand, "rx.run") == 1, 10)
    code.write_text(code.read_text().replace('VERSION = "1"', 'VERSION = "2"'))
    first = Reload(port)
    assert wait_for(lambda: DRAINING in driver.log(), 30), driver.log()[-3000:]
    return job, first


def test_a_config_broken_during_the_drain_does_not_stop_the_new_master(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver, port, code = start(tmp_path, gearmand, driver_factory)
    job, first = drain_with_new_code(driver, gearmand, port, code)
    good = driver.config_path.read_text()
    driver.config_path.write_text(good.replace('"console_port"', '"console_port": "x", "y"'))
    second = Reload(port)  # asked during the drain: the new master runs it, on the broken file
    assert job.result() == b"1"  # the job in hand finished on the old code
    status, err = first.result()
    assert (status, err) == (0, ""), driver.log()[-3000:]
    status, err = second.result()
    assert status == 1, (err, driver.log()[-3000:])
    assert err.startswith(f"gearman-driver: reload failed: {driver.config_path}:1:"), err
    assert driver.proc is not None and driver.proc.poll() is None  # the same master, running
    assert wait_for(lambda: version(gearmand) == b"2", 30)


def test_code_broken_during_the_drain_refuses_the_reload_and_keeps_the_old_code(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver, port, code = start(tmp_path, gearmand, driver_factory)
    job, first = drain_with_new_code(driver, gearmand, port, code)
    code.write_text("this is not python\n")  # the deploy went wrong while it drained
    assert job.result() == b"1"
    status, err = first.result()
    assert status == 1, (err, driver.log()[-3000:])
    assert "the worker code changed while the processes drained (slowpkg.mod); not " \
           "re-executing" in err, err
    assert driver.wait_registered("rx.run", 1, timeout=30)  # started again, on the old code
    assert version(gearmand) == b"1"


def test_a_reload_pending_at_sigterm_and_one_during_shutdown_are_refused(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver, port, code = start(tmp_path, gearmand, driver_factory)
    job, first = drain_with_new_code(driver, gearmand, port, code, seconds=6)
    driver.signal(15)
    status, err = first.result()
    assert status == 1, err
    assert err == ("gearman-driver: reload failed: gearman-driver is shutting down; the reload "
                   "was not applied; running on the previous configuration\n")
    during = Reload(port)  # the job keeps the master (and its console) up a little longer
    status, err = during.result()
    assert status in (1, 2), err  # refused, or no console left to ask: never OK
    if status == 1:
        assert "gearman-driver is shutting down; the reload was not applied" in err
    assert job.result() == b"1"
    assert driver.wait_exit(30) == 0
