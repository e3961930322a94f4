"""Autoscaling against a real gearmand: up on a burst, down after max_idle_time, never busy."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.gearmand_util import (
    TestClient,
    running,
    start_gearmand,
    stop_gearmand,
    submit_in_thread,
    wait_for,
    waiting,
)

BASIC = {"namespaces": ["tw.basic"], "interval": 1}


def only(job: str, **limits: Any) -> dict[str, Any]:
    """Switch every other job of tw.basic off; give `job` these limits."""
    names = ["t.echo", "t.show_options", "t.boom", "t.number", "t.pid", "t.die", "t.record",
             "t.sleep", "t.grp", "t.coded"]
    attrs: dict[str, Any] = {n: {"min_processes": 0, "max_processes": 0} for n in names}
    attrs[job] = limits
    return attrs


def test_burst_scales_up_to_max_then_back_to_min_after_idle(gearmand, driver_factory) -> None:
    driver = driver_factory(gearmand, {**BASIC, "max_idle_time": 2, "job_runtime_attributes":
                                       only("t.sleep", min_processes=1, max_processes=8)})
    assert driver.wait_registered("t.sleep", 1)
    with TestClient(gearmand) as client:
        client.submit_many_bg("t.sleep", [b"0.02"] * 200)
    assert driver.wait_registered("t.sleep", 8, timeout=10)  # how fast: bench/reaction.py
    assert wait_for(lambda: waiting(gearmand, "t.sleep") == 0, 20)
    assert driver.wait_registered("t.sleep", 1, timeout=10)
    assert wait_for(lambda: len(driver.children()) == 1, 5)  # the stopped ones have exited
    assert "stopping process" in driver.log() and "(idle)" in driver.log()


def test_busy_process_is_never_stopped_by_scale_down(gearmand, driver_factory) -> None:
    driver = driver_factory(gearmand, {**BASIC, "max_idle_time": 0, "job_runtime_attributes":
                                       only("t.sleep", min_processes=1, max_processes=4)})
    assert driver.wait_registered("t.sleep", 1)
    thread, results = submit_in_thread(gearmand, "t.sleep", b"5")
    assert wait_for(lambda: running(gearmand, "t.sleep") == 1, 5)
    with TestClient(gearmand) as client:
        client.submit_many_bg("t.sleep", [b"0.3"] * 12)
    assert driver.wait_registered("t.sleep", 4, timeout=10)
    # the short jobs drain; scale-down (max_idle_time 0) happens while the 5 s job runs
    assert driver.wait_registered("t.sleep", 1, timeout=15)
    thread.join(15)
    assert results and results[0].final == "complete" and results[0].result == b"slept 5"


def test_min_processes_zero_starts_on_demand(gearmand, driver_factory) -> None:
    driver = driver_factory(gearmand, {**BASIC, "max_idle_time": 1, "job_runtime_attributes":
                                       only("t.echo", min_processes=0, max_processes=2)})
    assert wait_for(lambda: "ready:" in driver.log(), 15)  # READY=1: the loop has scaled
    assert driver.registered("t.echo") == 0 and driver.children() == []
    with TestClient(gearmand, timeout=20) as client:
        outcome = client.submit("t.echo", b"on demand")
    assert outcome.result == b"on demand"
    assert wait_for(lambda: driver.children() == [], 10)


def test_two_drivers_share_the_shortfall(gearmand, driver_factory) -> None:
    config = {**BASIC, "max_idle_time": 30, "job_runtime_attributes":
              only("t.sleep", min_processes=1, max_processes=8)}
    first = driver_factory(gearmand, config, name="one")
    second = driver_factory(gearmand, config, name="two")
    assert first.wait_registered("t.sleep", 1) and second.wait_registered("t.sleep", 1)
    with TestClient(gearmand) as client:
        client.submit_many_bg("t.sleep", [b"4"] * 8)
    # every job taken: the scale-up decisions (and their forks) are behind both drivers
    assert wait_for(lambda: waiting(gearmand, "t.sleep") == 0
                    and running(gearmand, "t.sleep") == 8, 15)
    total = len(first.children()) + len(second.children())
    assert 8 <= total <= 10, f"{total} processes for 8 jobs"


def test_gearmand_down_at_start_then_up(tmp_path: Path, driver_factory) -> None:
    from tests.gearmand_util import free_port

    port = free_port()
    driver = driver_factory(port, {**BASIC, "job_runtime_attributes":
                                   only("t.sleep", min_processes=1, max_processes=4)})
    assert wait_for(lambda: f"gearmand 127.0.0.1:{port} is down" in driver.log(), 15)
    assert driver.proc is not None and driver.proc.poll() is None
    proc, port = start_gearmand(tmp_path / "late", port=port)
    try:
        assert driver.wait_registered("t.sleep", 1, timeout=10)
        with TestClient(port) as client:
            client.submit_many_bg("t.sleep", [b"1"] * 6)
        assert driver.wait_registered("t.sleep", 4, timeout=10)
        log = driver.log()
        assert log.count(f"127.0.0.1:{port}") >= 2
        down = [line for line in log.splitlines() if "down" in line and str(port) in line
                and "WARNING" in line]
        assert len(down) == 1, down
    finally:
        stop_gearmand(proc)


def test_unknown_job_callback_is_called_and_its_exceptions_are_logged(
        gearmand, driver_factory, tmp_path: Path) -> None:
    record = tmp_path / "unknown.jsonl"
    os.environ["GD_TEST_UNKNOWN_FILE"] = str(record)
    try:
        driver = driver_factory(gearmand, {**BASIC, "unknown_job_callback":
                                           "tw.hooks.callbacks:record_unknown"})
        assert driver.wait_registered("t.echo", 1)
        with TestClient(gearmand) as client:
            client.submit_many_bg("nobody.serves.this", [b"x"] * 3)
        assert wait_for(lambda: record.exists() and record.read_text().strip(), 5)
        status = json.loads(record.read_text().splitlines()[0])
        assert status == {"name": "nobody.serves.this", "queue": 3, "busy": 0, "free": 0,
                          "running": 0}
        other = driver_factory(gearmand, {**BASIC, "unknown_job_callback":
                                          "tw.hooks.callbacks:explode"}, name="explode")
        assert other.wait_registered("t.echo", 1)
        assert wait_for(lambda: "callback exploded" in other.log(), 5)
        assert other.proc is not None and other.proc.poll() is None
    finally:
        del os.environ["GD_TEST_UNKNOWN_FILE"]
