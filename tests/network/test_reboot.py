"""A gearmand host hard-rebooted under an idle worker (issue 22): with keepalive the worker
notices within about 3 × keepalive and the first job after the host is back completes; without
it the worker stays on the dead connection and the job is never served."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.gearmand_util import wait_for
from tests.network.conftest import FUNCTION, NetDriver, limits
from tests.network.netlab import Lab

pytestmark = [pytest.mark.slow, pytest.mark.network]

KEEPALIVE = 2
#: Done when: "with keepalive: 2 the first job after the host is back completes within 20 s"
BOUND = 20.0


@pytest.mark.parametrize("worker_backend", ["native", "pygearman", "slots"])
def test_hard_reboot_under_an_idle_worker(lab: Callable[[int], Lab],
                                          net_driver: Callable[..., NetDriver]) -> None:
    net = lab(1)
    host = net.hosts[0]
    host.start_gearmand()
    driver = net_driver(net, {"keepalive": KEEPALIVE, **limits(1, 1)})
    assert wait_for(lambda: host.our_processes(driver.pid) == 1, 20), driver.log()[-3000:]
    [worker] = driver.children()
    assert wait_for(lambda: net.quiet(host), 10)  # idle: nothing in flight to draw a reset

    host.reboot()
    back = time.monotonic()
    with host.client(timeout=BOUND + 10) as client:
        outcome = client.submit(FUNCTION, b"after-reboot")
    took = time.monotonic() - back
    print(f"first job after the reboot completed {took:.2f}s after the host was back")

    assert outcome.final == "complete", outcome
    assert took <= BOUND, f"{took:.1f}s"
    assert outcome.result == f"after-reboot:{worker}".encode()  # the same process, reconnected
    assert f"closing connection to {host.server}" in driver.log()
    assert wait_for(lambda: driver.servers() == [[host.server, "up", "1"]], 10), \
        driver.servers()
    metrics = driver.metrics()
    assert metrics[f'gearman_driver_gearmand_reconnects_total{{server="{host.server}"}}'] == 1
    assert metrics[f'gearman_driver_gearmand_workers_connected{{server="{host.server}"}}'] == 1


@pytest.mark.parametrize("worker_backend", ["native", "pygearman"])
def test_without_keepalive_an_idle_worker_is_stranded(
        lab: Callable[[int], Lab], net_driver: Callable[..., NetDriver]) -> None:
    """Why `keepalive: 0` is a bad idea: after the same reboot the worker sits on the dead
    connection; gearmand lists nobody for the job, which stays queued."""
    net = lab(1)
    host = net.hosts[0]
    host.start_gearmand()
    driver = net_driver(net, {"keepalive": 0, **limits(1, 1)})
    assert wait_for(lambda: host.our_processes(driver.pid) == 1, 20), driver.log()[-3000:]
    [worker] = driver.children()
    assert wait_for(lambda: net.quiet(host), 10)

    host.reboot()
    with host.client() as client:
        client.submit_bg(FUNCTION, b"stranded")
    waited = 3 * KEEPALIVE + 2  # what the reboot cost with keepalive 2, and then some
    assert not wait_for(lambda: driver.records() != [], waited)
    assert host.our_processes(driver.pid) == 0  # gearmand lists none of our processes
    assert driver.children() == [worker]  # alive, on its dead connection
    assert driver.servers() == [[host.server, "up", "0"]]  # what `servers` shows the operator
