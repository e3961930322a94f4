"""A job that ends with sys.exit() or KeyboardInterrupt (issue 21, item 9) fails like any job
that raised: the client gets WORK_FAIL, jobs_total counts it as failed (it was counted as
complete), and the process goes on serving."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.faults.workercode import sample, scrape, write_module
from tests.gearmand_util import TestClient, free_port, wait_for

pytestmark = pytest.mark.slow

EXITING = """
    import sys
    from gearman_driver import Worker, job

    class Exiting(Worker):
        prefix = "ex."

        @job
        def run(self, job, workload):
            if workload == b"exit":
                sys.exit()
            if workload == b"exit-code":
                sys.exit(3)
            if workload == b"interrupt":
                raise KeyboardInterrupt
            return workload
"""


@pytest.mark.parametrize("backend", ["native", "pygearman"])
def test_sys_exit_and_keyboard_interrupt_fail_the_job_and_are_counted_failed(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess],
        backend: str) -> None:
    lib = tmp_path / "lib"
    write_module(lib, "exiting.mod", EXITING)
    metrics = free_port()
    driver = driver_factory(gearmand, {"namespaces": ["exiting"], "lib": [str(lib)],
                                       "metrics_port": metrics, "worker_backend": backend})
    assert driver.wait_registered("ex.run", 1)
    pid = driver.children()[0]
    with TestClient(gearmand) as client:
        for payload in (b"exit", b"exit-code", b"interrupt"):
            assert client.submit("ex.run", payload).final == "fail", payload
        assert client.submit("ex.run", b"fine").result == b"fine"
    labels = {"job_name": "ex.run", "function": "ex.run"}

    def counted() -> bool:
        samples = scrape(metrics)
        return sample(samples, "gearman_driver_jobs_total", result="failed", **labels) == 3 \
            and sample(samples, "gearman_driver_jobs_total", result="complete", **labels) == 1

    assert wait_for(counted, 10), scrape(metrics)
    assert driver.children() == [pid]  # the same process served all four
    assert "SystemExit" in driver.log() and "KeyboardInterrupt" in driver.log()
