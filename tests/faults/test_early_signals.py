"""SIGHUP, SIGUSR1 and SIGUSR2 while the master still imports worker code (issue 21, item 2):
they killed it (the default action applies until handlers exist). Now the master lives,
and acts on them once its loop runs: the reload is done, the log file reopened."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.faults.workercode import write_module
from tests.gearmand_util import TestClient, wait_for

pytestmark = pytest.mark.slow

SLOW_IMPORT = """
    import os, time
    from gearman_driver import Worker, job

    # tell the test we are importing, then wait (bounded) until it has sent its signals
    open(os.environ["GD_TEST_IMPORTING"], "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(os.environ["GD_TEST_GO_ON"]) and time.monotonic() < deadline:
        time.sleep(0.01)

    class Slow(Worker):
        prefix = "slow."

        @job
        def echo(self, job, workload):
            return workload
"""


def test_signals_while_importing_are_acted_on_once_ready(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    lib = tmp_path / "lib"
    write_module(lib, "slowimport.mod", SLOW_IMPORT)
    importing, go_on = tmp_path / "importing", tmp_path / "go-on"
    logfile = tmp_path / "gd.log"
    driver = driver_factory(gearmand, {"namespaces": ["slowimport"], "lib": [str(lib)],
                                       "logfile": str(logfile)},
                            env={"GD_TEST_IMPORTING": str(importing),
                                 "GD_TEST_GO_ON": str(go_on)})
    assert wait_for(importing.exists, 30)
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        driver.signal(signum)
    rotated = tmp_path / "gd.log.1"
    logfile.rename(rotated)  # as logrotate does before its postrotate SIGUSR1
    go_on.touch()
    assert driver.wait_registered("slow.echo", 1, timeout=30)
    assert driver.proc is not None and driver.proc.poll() is None
    assert wait_for(lambda: "configuration reloaded" in logfile.read_text()
                    if logfile.exists() else False, 15), rotated.read_text()
    text = logfile.read_text() + rotated.read_text()
    assert "log file reopened" in text
    with TestClient(gearmand) as client:
        assert client.submit("slow.echo", b"alive").result == b"alive"
