"""Logging can fail without killing anything.

A reload naming a log file that cannot be opened is refused like any invalid config, and the old
log stays in use; SIGUSR1 after the log's directory was removed (logrotate gone wrong) keeps the
daemon running on the old file with one warning. Clients submit jobs throughout: none is lost.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.faults.faultutil import SteadyLoad, record_figures
from tests.gearmand_util import wait_for

pytestmark = pytest.mark.slow

WARNING = "cannot reopen the log file"


def start(gearmand: int, driver_factory: Callable[..., DriverProcess], logfile: Path
          ) -> tuple[DriverProcess, list[int]]:
    # max_idle_time: a process added for the load is not stopped the moment it idles (the
    # default, 0), so every process that goes away went for the fault under test
    driver = driver_factory(gearmand, {"namespaces": ["tw.pair"], "logfile": str(logfile),
                                       "max_idle_time": 3600})
    assert driver.wait_registered("alpha.opts", 2) and driver.wait_registered("beta.opts", 1)
    assert driver.wait_registered("alpha.work", 1)
    return driver, sorted(driver.children())


def test_reload_naming_an_unopenable_logfile_is_refused(
        gearmand: int, driver_factory: Callable[..., DriverProcess], tmp_path: Path) -> None:
    logfile = tmp_path / "logs" / "gd.log"
    logfile.parent.mkdir()
    driver, before = start(gearmand, driver_factory, logfile)
    missing = tmp_path / "no-such-dir" / "gd.log"
    with SteadyLoad(gearmand, "alpha.work") as load:
        assert wait_for(lambda: load.sent >= 2, 10)
        driver.rewrite_config({"logfile": str(missing)})
        started = time.monotonic()
        driver.signal(signal.SIGHUP)
        assert wait_for(lambda: "reload failed" in logfile.read_text(), 10), driver.log()
        seconds = time.monotonic() - started
        sent = load.sent
        assert wait_for(lambda: load.sent >= sent + 2, 10)  # jobs keep completing
    line = next(x for x in logfile.read_text().splitlines() if "reload failed" in x)
    assert f"reload failed: {driver.config_path}:" in line
    assert f": logfile: expected a file that can be opened for appending, got '{missing}' " \
           f"(directory {missing.parent} does not exist); running on the previous " \
           f"configuration" in line, line
    assert not missing.parent.exists()
    assert driver.proc is not None and driver.proc.poll() is None
    assert set(before) <= set(driver.children()), "a process was stopped"
    assert "Traceback" not in driver.log() + logfile.read_text()
    assert load.sent > 0 and load.lost == 0
    record_figures("log faults: reload names an unopenable logfile", sent=load.sent,
                   completed=load.completed, failed=0, lost=load.lost, recover_s=seconds,
                   peak_rss_kb=None,
                   notes=f"refused {seconds:.2f}s after SIGHUP with the logfile's file:line; "
                         f"old log kept; {len(before)}/{len(before)} processes kept")


def test_sigusr1_after_the_log_directory_was_removed_keeps_running(
        gearmand: int, driver_factory: Callable[..., DriverProcess], tmp_path: Path) -> None:
    logfile = tmp_path / "logs" / "gd.log"
    logfile.parent.mkdir()
    driver, before = start(gearmand, driver_factory, logfile)
    old_text = ""
    with open(logfile) as old_log, SteadyLoad(gearmand, "alpha.work", delay="0.3") as load:

        def old_log_has(text: str) -> bool:  # the file has no name any more: read our fd
            nonlocal old_text
            old_text += old_log.read()
            return text in old_text

        assert wait_for(lambda: load.sent >= 2, 10)  # jobs in hand when the signal comes
        shutil.rmtree(logfile.parent)
        driver.signal(signal.SIGUSR1)
        assert wait_for(lambda: WARNING in driver.log(), 10), driver.log()
        driver.signal(signal.SIGHUP)  # the daemon goes on: a reload still works and logs
        assert wait_for(lambda: old_log_has("configuration reloaded"), 10)
        logfile.parent.mkdir()  # logrotate fixed: the next SIGUSR1 reopens a new file
        driver.signal(signal.SIGUSR1)
        assert wait_for(lambda: logfile.exists() and "log file reopened" in
                        logfile.read_text(), 10)
        old_log_has("")
    assert old_text.count(WARNING) == 1 and driver.log().count(WARNING) == 1, driver.log()
    assert f"{WARNING} {logfile}: directory {logfile.parent} does not exist; still logging " \
           f"to the file opened before" in driver.log()
    assert driver.proc is not None and driver.proc.poll() is None
    assert set(before) <= set(driver.children()), \
        f"a process was stopped:\n{old_text}{logfile.read_text()}"
    assert "Traceback" not in driver.log() + old_text + logfile.read_text()
    assert load.sent > 0 and load.lost == 0
    record_figures("log faults: SIGUSR1 after the log directory was removed", sent=load.sent,
                   completed=load.completed, failed=0, lost=load.lost, recover_s=None,
                   peak_rss_kb=None,
                   notes=f"0.3 s jobs in hand; daemon kept running on the old (unlinked) file; "
                         f"1 warning there and 1 on stderr; {len(before)}/{len(before)} "
                         f"processes kept; the next SIGUSR1 after the directory returned "
                         f"reopened the log")

