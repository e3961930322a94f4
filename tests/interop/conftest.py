"""A gearmand and a gearman-driver per worker backend, shared by the tests of a module.

gearmand runs with Debian's defaults (the packaged service passes only --listen and logging
options: 4 I/O threads, no --exceptions, no --job-retries), so the clients meet the server
they meet in production. The driver serves tests/fixtures/tw/interop with a console, so the
tests can compare gearmand's view with the driver's. Everything is stopped by pid.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.gearmand_util import free_port, start_gearmand, stop_gearmand

pytestmark = pytest.mark.interop

BACKENDS = ["native", "pygearman"]

# every function of the fixture with the processes the driver keeps for it
PROCESSES = {
    "io.echo": 2, "io.progress": 1, "io.parse": 1, "io.fail_method": 1, "io.fail_encode": 1,
    "io.fail_loud": 1, "io.hold": 1, "io.record": 1, "io.fail_record": 1,
    "io.coalesce": 1, "io.fail_begin": 1,
    "io.fail_end": 1,
}


@dataclass
class Stack:
    """A running gearmand + driver pair, and the directory the fixture workers share."""

    port: int
    driver: DriverProcess
    console_port: int
    dir: Path
    backend: str


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    backend: str = request.param
    tmp = tmp_path_factory.mktemp(f"interop-{backend}")
    shared = tmp / "shared"
    shared.mkdir()
    gearmand, port = start_gearmand(tmp / "gearmand", "--threads=4")
    console_port = free_port()
    driver = DriverProcess(tmp, port, {
        "namespaces": ["tw.interop"],
        "worker_backend": backend,
        "console_port": console_port,
        "loglevel": "INFO",
        "interval": 0,  # no scaling: the process counts stay what the fixture says
        "worker_options": {"tw.interop.workers.Interop": {"dir": str(shared)}},
    }).start()
    try:
        for function, count in PROCESSES.items():
            assert driver.wait_registered(function, count, timeout=30), driver.log()[-3000:]
        yield Stack(port, driver, console_port, shared, backend)
    finally:
        driver.stop()
        stop_gearmand(gearmand)
