"""`keepalive` on the worker processes' gearmand connections, as the kernel has it (`ss`
shows each connection's keepalive timer), on both backends; a reload that changes it applies
it to the processes started afterwards and says so, and leaves running ones as they are."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from tests.gearmand_util import wait_for

FUNCTION = "t.echo"
_UNITS = {"min": 60.0, "sec": 1.0, "ms": 0.001}


@pytest.fixture(params=["native", "pygearman"])
def worker_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def keepalive_timers(port: int) -> dict[int, float]:
    """pid -> seconds left on the keepalive timer of its connection to gearmand on `port`."""
    out = subprocess.run(["ss", "-tnpo", "state", "established", "dport", "=", f":{port}"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    timers: dict[int, float] = {}
    for line in out.splitlines():
        pid = re.search(r"pid=(\d+)", line)
        timer = re.search(r"timer:\(keepalive,([^,]+),", line)
        if pid and timer:
            timers[int(pid.group(1))] = sum(
                int(n) * _UNITS[unit] for n, unit in re.findall(r"(\d+)(min|sec|ms)",
                                                                timer.group(1)))
    return timers


def timer_of(port: int, pid: int) -> float:
    """Seconds left on the keepalive timer of `pid`'s connection, once `ss` shows one (while
    data is in flight it shows the retransmission timer instead)."""
    timers: dict[int, float] = {}

    def shown() -> bool:
        timers.update(keepalive_timers(port))
        return pid in timers

    assert wait_for(shown, 10), keepalive_timers(port)
    return timers[pid]


def test_each_connection_is_probed_and_a_reload_changes_new_ones(gearmand, driver_factory
                                                                 ) -> None:
    only_echo = {"job_runtime_attributes": {FUNCTION: {"min_processes": 1, "max_processes": 1}}}
    driver = driver_factory(gearmand, {"namespaces": ["tw.basic"], "keepalive": 100,
                                       "interval": 0, **only_echo})
    assert driver.wait_registered(FUNCTION, 1)
    first = min(driver.children())
    assert 50 < timer_of(gearmand, first) <= 100  # idle for 100 s before a probe

    driver.rewrite_config({"keepalive": 3000})
    driver.signal(signal.SIGHUP)
    assert wait_for(lambda: "keepalive changed from 100s to 3000s" in driver.log(), 15)
    assert timer_of(gearmand, first) <= 100  # a running process keeps its own

    running = set(driver.children())
    for pid in running:
        os.kill(pid, signal.SIGTERM)  # each stops gracefully and is replaced at once
    assert wait_for(lambda: len(set(driver.children()) - running) == len(running), 15)
    assert all(timer_of(gearmand, pid) > 2000 for pid in set(driver.children()) - running)


def test_keepalive_zero_leaves_the_connections_unprobed(gearmand, driver_factory) -> None:
    driver = driver_factory(gearmand, {"namespaces": ["tw.basic"], "keepalive": 0})
    assert driver.wait_registered(FUNCTION, 1)
    children = set(driver.children())
    out = subprocess.run(["ss", "-tnpo", "state", "established", "dport", "=", f":{gearmand}"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    ours = [line for line in out.splitlines()
            if any(f"pid={pid}," in line for pid in children)]
    assert ours and not any("keepalive" in line for line in ours), out
