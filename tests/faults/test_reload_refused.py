"""A reload whose new code cannot be loaded is refused before anything is drained.

Each case changes the config or the worker code of a running driver and sends SIGHUP while
clients keep submitting jobs: a `namespaces` typo, worker code that now raises at import, and a
worker constructor that hangs. The driver must keep every process, answer its console, handle
signals, lose no job, log the error (with file:line where there is one) and show
`reload failed: …; running on the previous configuration` in STATUS.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess, NotifySocket, alive
from tests.faults.faultutil import SteadyLoad, console, console_config, record_figures
from tests.gearmand_util import TestClient, wait_for

pytestmark = pytest.mark.slow

CODE = '''
import time

from gearman_driver import Worker, job


class Versioned(Worker):
    prefix = "v."

    def __init__(self, *, server, hang=False, **options):
        super().__init__(server=server, **options)
        if hang:
            time.sleep(3600)

    @job
    def which(self, job, workload):
        return "v1"

    @job(min_processes=2, max_processes=2)
    def work(self, job, workload):
        delay, _, _ = workload.partition(b":")
        time.sleep(float(delay))
        return workload
'''


def write_code(module: Path, text: str) -> None:
    """New code with an mtime the driver cannot miss, even within the same second."""
    module.write_text(text)
    later = time.time() + 5
    os.utime(module, (later, later))


def start(gearmand: int, driver_factory: Callable[..., DriverProcess], notify: NotifySocket,
          tmp_path: Path, **config: object) -> tuple[DriverProcess, int, Path]:
    package = tmp_path / "code" / "vpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    module = package / "mod.py"
    module.write_text(CODE)
    port, console_keys = console_config()
    driver = driver_factory(gearmand, {"namespaces": ["vpkg"], "lib": [str(tmp_path / "code")],
                                       **console_keys, **config},
                            env={"NOTIFY_SOCKET": str(notify.path)})
    assert notify.wait_keys(["READY"])
    assert driver.wait_registered("v.work", 2) and driver.wait_registered("v.which", 1)
    return driver, port, module


def refused(driver: DriverProcess, notify: NotifySocket, gearmand: int, port: int,
            before: list[int], started: float) -> tuple[str, float, int, int]:
    """Wait for the refusal while polling the console; check that nothing changed.
    Returns the logged error line, seconds from `started` to it, console polls and answers."""
    polls = answered = 0
    while not wait_for(lambda: "reload failed" in driver.log(), 0.2):
        polls += 1
        answered += any(line.startswith("v.work") for line in console(port, "status"))
        assert polls < 300, driver.log()[-3000:]
    seconds = time.monotonic() - started
    failed = [line for line in driver.log().splitlines() if "reload failed" in line]
    assert len(failed) == 1 and failed[0].endswith("; running on the previous configuration")
    assert notify.wait_keys(["READY", "RELOADING", "READY"])
    assert wait_for(lambda: any(s.startswith("reload failed: ") and s.endswith(
        "; running on the previous configuration") for s in notify.statuses()), 5)
    assert sorted(driver.children()) == before, "a process was stopped or started"
    assert "re-executing" not in driver.log() and "Traceback" not in driver.log()
    with TestClient(gearmand) as client:
        assert client.submit("v.which", b"").result == b"v1"  # the old code still serves
    assert driver.proc is not None and driver.proc.poll() is None
    assert console(port, "status")
    return failed[0], seconds, polls, answered


def record(kind: str, driver: DriverProcess, load: SteadyLoad, seconds: float, kept: int,
           polls: int, answered: int, extra: str = "") -> None:
    assert load.sent > 0 and load.lost == 0
    record_figures(f"reload refused: {kind}", sent=load.sent, completed=load.completed,
                   failed=0, lost=load.lost, recover_s=seconds, peak_rss_kb=None,
                   notes=f"refused {seconds:.2f}s after SIGHUP; {kept}/{kept} processes kept; "
                         f"{answered}/{polls} console polls answered meanwhile{extra}")


def test_namespaces_typo_is_refused(gearmand: int, driver_factory: Callable[..., DriverProcess],
                                    notify: NotifySocket, tmp_path: Path) -> None:
    driver, port, _ = start(gearmand, driver_factory, notify, tmp_path)
    before = sorted(driver.children())
    with SteadyLoad(gearmand, "v.work") as load:
        driver.rewrite_config({"namespaces": ["vpkgg"]})
        started = time.monotonic()
        driver.signal(signal.SIGHUP)
        line, seconds, polls, answered = refused(driver, notify, gearmand, port, before,
                                                 started)
    assert re.search(re.escape(f"reload failed: {driver.config_path}:") + r"\d+:\d+: "
                     r"namespaces\[0\]: expected an importable package, got 'vpkgg'", line), line
    record("namespaces typo", driver, load, seconds, len(before), polls, answered)


def test_worker_code_that_raises_at_import_is_refused(
        gearmand: int, driver_factory: Callable[..., DriverProcess], notify: NotifySocket,
        tmp_path: Path) -> None:
    driver, port, module = start(gearmand, driver_factory, notify, tmp_path)
    before = sorted(driver.children())
    with SteadyLoad(gearmand, "v.work") as load:
        write_code(module, CODE + "\nraise RuntimeError('half-deployed')\n")
        started = time.monotonic()
        driver.signal(signal.SIGHUP)
        line, seconds, polls, answered = refused(driver, notify, gearmand, port, before,
                                                 started)
    line_no = (CODE + "\n").count("\n") + 1
    assert f"cannot import worker module vpkg.mod: RuntimeError: half-deployed (at {module}:" \
           f"{line_no})" in line, line
    record("worker code raises at import", driver, load, seconds, len(before), polls, answered)


@pytest.mark.parametrize("how", ["code change", "worker_options change"])
def test_a_hanging_constructor_is_a_failed_reload_after_the_time_limit(
        how: str, gearmand: int, driver_factory: Callable[..., DriverProcess],
        notify: NotifySocket, tmp_path: Path) -> None:
    """New code re-executes the master, new worker_options replace the class's processes:
    either way the constructor runs in the trial first, and its hang refuses the reload."""
    driver, port, module = start(gearmand, driver_factory, notify, tmp_path, graceful_timeout=2)
    before = sorted(driver.children())
    with SteadyLoad(gearmand, "v.work") as load:
        if how == "code change":
            write_code(module, CODE.replace("if hang:", "if True:"))
        else:
            driver.rewrite_config({"worker_options": {"vpkg.mod.Versioned": {"hang": True}}})
        started = time.monotonic()
        driver.signal(signal.SIGHUP)
        assert wait_for(lambda: "trying the new worker code in process" in driver.log(), 5)
        trial = int(re.findall(r"trying the new worker code in process (\d+)", driver.log())[0])
        assert alive(trial)
        driver.signal(signal.SIGUSR1)  # signals are handled while the trial hangs
        assert wait_for(lambda: "log file reopened" in driver.log(), 1.5)
        line, seconds, polls, answered = refused(driver, notify, gearmand, port, before,
                                                 started)
    assert "loading the new worker code took longer than 2s (graceful_timeout); trial " \
           f"process {trial} killed" in line, line
    assert wait_for(lambda: not alive(trial), 2)
    record(f"worker constructor hangs after a {how} (graceful_timeout 2)", driver, load,
           seconds, len(before), polls, answered,
           "; SIGUSR1 handled during the trial; trial process killed by pid")


def test_a_good_code_change_still_reexecs_after_the_trial(
        gearmand: int, driver_factory: Callable[..., DriverProcess], notify: NotifySocket,
        tmp_path: Path) -> None:
    """The trial must not refuse what loads: the master re-executes and serves the new code."""
    driver, _, module = start(gearmand, driver_factory, notify, tmp_path)
    write_code(module, CODE.replace('"v1"', '"v2"'))
    driver.signal(signal.SIGHUP)
    assert notify.wait_keys(["READY", "RELOADING", "READY"], timeout=20)
    with TestClient(gearmand) as client:
        assert wait_for(lambda: client.submit("v.which", b"").result == b"v2", 10)
    assert "the new worker code loads: re-executing the master" in driver.log()
