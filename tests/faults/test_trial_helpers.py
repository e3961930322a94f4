"""A reload's trial of new worker code whose module forks a helper process at import (issue 21,
item 8): the helper held the trial's pipe open, so the trial that had answered `ok` was killed
after graceful_timeout, the reload refused ("took longer than 5s … killed") and the helper left
behind. Now the answer is complete without the pipe's EOF, the reload is applied, and the
trial's whole process group, the helper with it, is gone."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess, alive, run_cli
from tests.faults.faultutil import console_config
from tests.faults.workercode import write_module
from tests.gearmand_util import TestClient, wait_for

pytestmark = pytest.mark.slow

FORKING = """
    import os, time
    from gearman_driver import Worker, job

    # a helper process started at import, as some libraries do (a metrics pusher, a cache)
    helper = os.fork()
    if helper == 0:
        time.sleep(120)
        os._exit(0)
    with open(os.environ["GD_TEST_HELPERS"], "a") as pids:
        pids.write(f"{os.getpid()} {helper}\\n")

    class Forking(Worker):
        prefix = "fk."

        def __init__(self, *, server, colour="red", **options):
            super().__init__(server=server, **options)
            self.colour = colour

        @job
        def colour_of(self, job, workload):
            return self.colour
"""


def _helpers(path: Path) -> list[tuple[int, int]]:
    """(the process that imported the module, its helper), in the order they were started."""
    if not path.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in path.read_text().split("\n")
                                          if line)]


def test_a_helper_forked_at_import_does_not_hold_the_trial_open(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    lib = tmp_path / "lib"
    write_module(lib, "forking.mod", FORKING)
    pids = tmp_path / "helpers"
    port, console_keys = console_config()
    driver = driver_factory(gearmand, {"namespaces": ["forking"], "lib": [str(lib)],
                                       "graceful_timeout": 5, **console_keys},
                            env={"GD_TEST_HELPERS": str(pids)})
    try:
        assert driver.wait_registered("fk.colour_of", 1)
        assert [importer for importer, _ in _helpers(pids)] == [driver.pid]
        # new worker_options for the class: the new objects are built in a trial first
        driver.rewrite_config({"worker_options": {"forking.mod.Forking": {"colour": "blue"}}})
        result = run_cli("reload", "--server", f"127.0.0.1:{port}", "--timeout", "60")
        assert result.returncode == 0, (result.stderr, driver.log()[-2000:])
        trial, trial_helper = _helpers(pids)[1]
        assert trial != driver.pid
        assert wait_for(lambda: not alive(trial_helper), 10), "the trial's helper was left"
        assert wait_for(lambda: not alive(trial), 10)
        assert "took longer than" not in driver.log()
        with TestClient(gearmand) as client:
            assert wait_for(lambda: client.submit("fk.colour_of", b"").result == b"blue", 20)
    finally:
        for _, helper in _helpers(pids):
            if alive(helper):
                os.kill(helper, 9)  # the master's own helper is a child of the daemon's
