"""A partition and its heal during a burst of background jobs, and a link that flaps
(issue 22): every job completes; a job whose result was in flight when the link went is run
again, as gearmand re-queues it, and the duplicates are counted (at most one per process
and partition); afterwards every process is registered again. On both worker backends.

gearmand runs with its own keepalive, as docs/network.md advises: it is gearmand that must
notice a worker's connection died to hand that worker's job to another; without it a job
whose assignment was acknowledged before the link went stays on the dead connection, since
gearmand sends nothing more to a worker holding a job."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.gearmand_util import wait_for
from tests.network.conftest import FUNCTION, NetDriver, limits
from tests.network.netlab import Host, Lab

pytestmark = [pytest.mark.slow, pytest.mark.network]

KEEPALIVE = 1  # the driver's: a dead peer is noticed within about 3 s
GEARMAND_KEEPALIVE = ("--keepalive", "--keepalive-idle=1", "--keepalive-interval=1",
                      "--keepalive-count=2")
PROCESSES = 4


def one_host(lab: Callable[[int], Lab], net_driver: Callable[..., NetDriver]
             ) -> tuple[Host, NetDriver]:
    """A gearmand host (with gearmand's keepalive) and a driver with PROCESSES registered."""
    host = lab(1).hosts[0]
    host.start_gearmand(*GEARMAND_KEEPALIVE)
    driver = net_driver(host.lab, {"keepalive": KEEPALIVE, **limits(PROCESSES, PROCESSES)})
    assert wait_for(lambda: host.our_processes(driver.pid) == PROCESSES, 20), \
        driver.log()[-3000:]
    return host, driver


def submit(host: Host, tag: str, jobs: int, ms: int) -> set[str]:
    ids = [f"{tag}{i}" for i in range(jobs)]
    with host.client() as client:
        client.submit_many_bg(FUNCTION, [f"{i}/{ms}".encode() for i in ids])
    return set(ids)


def all_ran(driver: NetDriver, host: Host, ids: set[str], limit: float = 60
            ) -> tuple[int, int]:
    """Wait until every id ran and gearmand holds none of them any more (a job whose result
    was lost is re-queued once gearmand drops the dead connection it was on: when its
    retransmission or keepalive probe meets the worker's kernel, which resets it);
    (runs of these ids, duplicate runs)."""
    assert wait_for(lambda: ids <= set(driver.records()), limit), \
        f"{len(ids - set(driver.records()))} of {len(ids)} never ran\n{driver.log()[-3000:]}"
    assert wait_for(lambda: host.admin("status")[0].split("\t")[1] == "0", limit), \
        host.admin("status")
    runs = [i for i in driver.records() if i in ids]
    return len(runs), len(runs) - len(ids)


def settled(driver: NetDriver, host: Host) -> None:
    """Every process registered with the server again, and `servers` says so."""
    assert wait_for(lambda: host.our_processes(driver.pid) == PROCESSES, 30), \
        driver.log()[-3000:]
    assert wait_for(lambda: driver.servers() == [[host.server, "up", str(PROCESSES)]], 10)
    with host.client() as client:
        assert client.submit(FUNCTION, b"afterwards").final == "complete"


def test_partition_and_heal_during_a_burst(lab: Callable[[int], Lab],
                                           net_driver: Callable[..., NetDriver]) -> None:
    host, driver = one_host(lab, net_driver)
    ids = submit(host, "p", 400, 20)  # 2 s of work for 4 processes
    assert wait_for(lambda: len(driver.records()) >= 100, 20)

    host.link_down()
    partitioned = time.monotonic()
    # held until every process gave its connection up (gearmand notices its side when its
    # retransmissions or keepalive probes meet the workers' kernels, which reset them)
    assert wait_for(lambda: driver.log().count(f"closing connection to {host.server}")
                    >= PROCESSES, 20), driver.log()[-3000:]
    done_before = len(set(driver.records()) & ids)
    held = time.monotonic() - partitioned
    host.link_up()

    runs, duplicates = all_ran(driver, host, ids)
    print(f"partition held {held:.1f}s with {done_before}/{len(ids)} jobs done; all "
          f"{len(ids)} completed, {duplicates} run twice ({runs} runs)")
    assert 0 <= duplicates <= PROCESSES  # at most the job each process had in hand
    settled(driver, host)
    assert wait_for(lambda: host.admin("status") == [f"{FUNCTION}\t0\t0\t{PROCESSES}"], 30), \
        host.admin("status")  # nothing queued, no dead connection left


def test_a_flapping_link(lab: Callable[[int], Lab], net_driver: Callable[..., NetDriver]
                         ) -> None:
    """Short drops (which TCP rides out) and one longer than 3 × keepalive (which it does
    not), while jobs run: nothing lost, everything back, and the log says each outage once."""
    host, driver = one_host(lab, net_driver)
    ids = submit(host, "f", 300, 40)  # 3 s of work for 4 processes
    # the flapping is the stimulus (down, up) in seconds, not a wait for a condition
    for down, up in ((0.5, 1.0), (4.5, 1.0), (1.0, 0.5), (0.3, 0.3), (4.5, 0.5)):
        host.link_down()
        time.sleep(down)
        host.link_up()
        time.sleep(up)

    runs, duplicates = all_ran(driver, host, ids)
    print(f"flapping: all {len(ids)} completed, {duplicates} run twice ({runs} runs)")
    assert 0 <= duplicates <= 2 * PROCESSES  # two drops long enough to lose connections
    settled(driver, host)
    log = driver.log()
    down, back = (log.count(f"gearmand {host.server} is {what}") for what in ("down", "back up"))
    assert down == back <= 5, (down, back)  # one line per outage seen, not one per retry
    warnings = [line for line in log.splitlines() if " WARNING " in line and host.server in line]
    assert all(" is down" in line or " lost to " in line for line in warnings), warnings
