"""Every process of the daemon writes to the log file configured now, and a log that cannot be
written costs one line, not a traceback per line (issue 21, items 12 and 14).

Found before: after logrotate moved the log and sent SIGUSR1, worker processes kept writing to
the rotated file (only the master reopened); after a reload to another `logfile` (answered OK)
the workers' lines still went to the old one; with the log on a full disk every line printed
Python's "--- Logging error ---" traceback on stderr (794 lines for about 20 jobs)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.faults.workercode import write_module
from tests.gearmand_util import TestClient, wait_for

pytestmark = pytest.mark.slow

LOGGING_WORKER = """
    import logging
    import os
    from gearman_driver import Worker, job

    log = logging.getLogger("logwork")

    class LogWork(Worker):
        prefix = "lw."

        @job(min_processes=2, max_processes=2)
        def run(self, job, workload):
            text = workload.decode()
            if text.startswith("fail"):
                raise ValueError(f"asked to fail: {text}")
            log.info("job line %s from %d %s", text, os.getpid(), "." * 2048)
            return workload
"""


def _start(tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess],
           logfile: Path, **config: object) -> DriverProcess:
    lib = tmp_path / "lib"
    write_module(lib, "logwork.mod", LOGGING_WORKER)
    driver = driver_factory(gearmand, {"namespaces": ["logwork"], "lib": [str(lib)],
                                       "logfile": str(logfile), "loglevel": "INFO",
                                       "max_idle_time": 3600, **config})
    assert driver.wait_registered("lw.run", 2)
    return driver


def _jobs(gearmand: int, words: list[str]) -> None:
    with TestClient(gearmand) as client:
        for word in words:
            outcome = client.submit("lw.run", word.encode())
            assert outcome.final == ("fail" if word.startswith("fail") else "complete"), word


def _reloaded(driver: DriverProcess, logfile: Path, count: int) -> bool:
    return logfile.exists() and logfile.read_text().count("configuration reloaded") >= count


@pytest.mark.parametrize("how", ["logrotate", "reload"])
def test_every_process_writes_to_the_log_file_configured_now(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess],
        how: str) -> None:
    logfile = tmp_path / "gd.log"
    driver = _start(tmp_path, gearmand, driver_factory, logfile)
    workers = driver.children()
    _jobs(gearmand, ["before"])
    if how == "logrotate":
        old = tmp_path / "gd.log.1"
        logfile.rename(old)  # logrotate's move, then its postrotate SIGUSR1
        driver.signal(signal.SIGUSR1)
        assert wait_for(lambda: logfile.exists() and "log file reopened" in logfile.read_text())
        new = logfile
    else:
        old, new = logfile, tmp_path / "other.log"
        driver.rewrite_config({"logfile": str(new)})
        driver.signal(signal.SIGHUP)
        assert wait_for(lambda: _reloaded(driver, new, 1))
    words = [f"after-{i}" for i in range(10)] + ["fail-after"]
    _jobs(gearmand, words)
    assert driver.children() == workers  # nobody was restarted for it
    assert wait_for(lambda: all(w in new.read_text() for w in words)), new.read_text()
    stale = old.read_text()
    assert not any(w in stale for w in words), stale
    assert "ValueError: asked to fail: fail-after" in new.read_text()  # the job's traceback


def test_a_reload_of_the_level_reaches_the_workers(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    logfile = tmp_path / "gd.log"
    driver = _start(tmp_path, gearmand, driver_factory, logfile, loglevel="WARNING")
    _jobs(gearmand, ["quiet"])
    driver.rewrite_config({"loglevel": "INFO"})
    driver.signal(signal.SIGHUP)
    assert wait_for(lambda: _reloaded(driver, logfile, 1))
    _jobs(gearmand, ["loud-1", "loud-2"])
    assert wait_for(lambda: "job line loud-2" in logfile.read_text())
    assert "job line quiet" not in logfile.read_text()


@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (the tests run as root), unmounted afterwards."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(path: Path) -> None:
    """Write zeros to `path` until the file system is full."""
    with open(path, "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_disk_costs_one_line_per_process_and_recovers(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    with small_filesystem(tmp_path / "small") as small:
        logfile = small / "gd.log"
        driver = _start(tmp_path, gearmand, driver_factory, logfile)
        filler = small / "filler"
        _fill(filler)
        words = [f"full-{i}" for i in range(20)] + ["fail-full"]
        _jobs(gearmand, words)  # every job completes (or fails as asked) on a full disk
        stderr = driver.log()
        assert "--- Logging error ---" not in stderr and "Traceback" not in stderr, stderr
        complaints = [line for line in stderr.splitlines()
                      if f"cannot write the log file {logfile}: " in line]
        assert 1 <= len(complaints) <= 3, complaints  # the master and its two workers, once
        assert all("No space left on device" in line for line in complaints), complaints
        filler.unlink()
        _jobs(gearmand, [f"room-{i}" for i in range(10)])
        assert wait_for(lambda: f"the log file {logfile} can be written again" in driver.log())
        assert wait_for(lambda: "job line room-9" in logfile.read_text())
        assert driver.proc is not None and driver.proc.poll() is None
        driver.stop()
