"""Processes that die at start (before taking any job) back off exponentially: few forks,
an idle master, a console that answers, and a healthy neighbour job that keeps working."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.driver_util import cpu_seconds
from tests.faults.faultutil import (
    console,
    console_config,
    peak_rss_kb,
    record_figures,
    started_count,
)
from tests.gearmand_util import TestClient

WINDOW = 30.0


@pytest.mark.slow
def test_processes_dying_at_start_back_off(gearmand, driver_factory, tmp_path: Path) -> None:
    starts = tmp_path / "starts.txt"
    cport, cfg = console_config()
    driver = driver_factory(gearmand, {
        "namespaces": ["tw.faults.deadstart"], "loglevel": "INFO", **cfg,
        "worker_options": {"GLOBAL": {"starts_file": str(starts)}}})
    assert driver.wait_registered("f.alive.ping", 1)
    cpu0, t0 = cpu_seconds(driver.pid), time.monotonic()
    console_ok, console_failed, pings = 0, [], 0
    with TestClient(gearmand, timeout=10) as client:
        while time.monotonic() - t0 < WINDOW:
            try:
                lines = console(cport, "status", timeout=1.0)
                assert any(x.startswith("f.dead.never") for x in lines)
                console_ok += 1
            except Exception as exc:  # noqa: BLE001
                console_failed.append(repr(exc))
            if client.submit("f.alive.ping", b"").result == b"pong":
                pings += 1
            time.sleep(1.0)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(driver.pid) - cpu0
    n_starts = len(starts.read_text().split()) if starts.exists() else 0
    logged = started_count(driver.log(), "f.dead.never")
    status = console(cport, "status")
    peak = peak_rss_kb(driver.pid)
    record_figures("processes die at start (30 s)", sent=pings, completed=pings, failed=0,
                   lost=0, recover_s=None, peak_rss_kb=peak,
                   notes=f"{n_starts} starts of the broken job in {wall:.0f}s (min_processes 2); "
                         f"master CPU {100 * cpu / wall:.2f}%; {console_ok} console polls "
                         f"answered; the healthy job answered {pings} pings",
                   starts=n_starts, master_cpu_pct=round(100 * cpu / wall, 2))
    assert 2 <= n_starts <= 8, n_starts
    assert logged == n_starts
    assert cpu / wall < 0.05, f"master used {100 * cpu / wall:.1f}% CPU"
    assert not console_failed and console_ok >= WINDOW * 0.8
    assert pings == console_ok + len(console_failed)
    row = next(x for x in status if x.startswith("f.dead.never"))
    assert "process exited" in row, row  # the console shows why
    assert "failed to start" in driver.log()
    assert driver.proc is not None and driver.proc.poll() is None
