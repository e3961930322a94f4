"""One ceiling on processes per job and per driver, the scoreboard's size (issue 12, item 6):
the console, the config schema, the loader and add_job all refuse more."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gearman_driver.api import Worker
from gearman_driver.config.settings import ConfigError, load_settings
from gearman_driver.console.commands import handle_line
from gearman_driver.jobs.table import LoadError
from gearman_driver.master.driver import Driver
from gearman_driver.scoreboard import MAX_PROCESSES
from tests.unit.test_console_support import MemoryController

LOG = logging.getLogger("test.ceiling")
HUGE = "99999999999"
JOB = "My::Workers::Two::scale_image"


def run(ctl: MemoryController, line: str) -> list[str]:
    reply = handle_line(ctl, line.encode(), LOG)
    assert reply is not None
    return list(reply.lines)


@pytest.mark.parametrize(("command", "what"), [
    (f"set_processes {JOB} {HUGE} {HUGE}", "max_processes"),
    (f"set_processes {JOB} 1 {MAX_PROCESSES + 1}", "max_processes"),
    (f"set_max_processes {JOB} {HUGE}", "max_processes"),
    (f"set_min_processes {JOB} {MAX_PROCESSES + 1}", "min_processes"),
])
def test_console_refuses_limits_above_the_ceiling(command: str, what: str) -> None:
    ctl = MemoryController()
    before = (ctl.jobs[JOB].min_processes, ctl.jobs[JOB].max_processes)
    assert run(ctl, command) == [f"ERR invalid_value: {what} must be <= {MAX_PROCESSES}"]
    assert (ctl.jobs[JOB].min_processes, ctl.jobs[JOB].max_processes) == before


def test_console_accepts_the_ceiling_itself() -> None:
    ctl = MemoryController()
    assert run(ctl, f"set_processes {JOB} 0 {MAX_PROCESSES}") == ["OK"]
    assert ctl.jobs[JOB].max_processes == MAX_PROCESSES


@pytest.mark.parametrize("key", ["min_processes", "max_processes"])
def test_config_refuses_limits_above_the_ceiling(tmp_path: Path, key: str) -> None:
    path = tmp_path / "c.yml"
    path.write_text(f"job_runtime_attributes:\n  some.job:\n    {key}: {MAX_PROCESSES + 1}\n")
    with pytest.raises(ConfigError) as info:
        load_settings([str(path)])
    assert str(info.value) == (
        f"{path}:3:{len(key) + 7}: job_runtime_attributes.some.job.{key}: expected an "
        f"integer 0..{MAX_PROCESSES}, got {MAX_PROCESSES + 1}")


class _Echo(Worker):
    def echo(self, job: object, workload: bytes) -> bytes:
        return workload


def test_add_job_refuses_limits_above_the_ceiling() -> None:
    driver = Driver(server="127.0.0.1:1")
    worker = _Echo(server="127.0.0.1:1")
    methods = [{"name": "echo", "body": _Echo.echo}]
    with pytest.raises(LoadError, match=rf"max_processes must be an integer 0..{MAX_PROCESSES}"
                                        rf", got 99999999999"):
        driver.add_job("echo", worker, methods, min_processes=1, max_processes=int(HUGE))
    driver.add_job("echo", worker, methods, min_processes=1, max_processes=MAX_PROCESSES)
    assert driver.get_job("echo").max_processes == MAX_PROCESSES
