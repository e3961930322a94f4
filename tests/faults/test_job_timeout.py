"""A job that hangs forever under `timeout: 2`: its process is killed and replaced after ~2 s,
other jobs keep flowing, the job is retried by gearmand, and the log says what happened."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.faultutil import peak_rss_kb, record_figures
from tests.gearmand_util import JobOutcome, TestClient, wait_for

CONFIG = {"namespaces": ["tw.faults.hang"],
          "job_runtime_attributes": {"f.hang.work": {"timeout": 2}}}


def run_hang(gearmand: int, driver_factory: Any, tmp_path: Path) -> dict[str, Any]:
    driver = driver_factory(gearmand, CONFIG)
    assert driver.wait_registered("f.hang.work", 2)
    before = set(driver.children())
    marker = tmp_path / "hung-once"
    hung: list[JobOutcome] = []

    def hang_client() -> None:
        with TestClient(gearmand, timeout=60) as client:
            hung.append(client.submit("f.hang.work", f"hang:{marker}".encode()))

    thread = threading.Thread(target=hang_client, daemon=True)
    thread.start()
    assert wait_for(marker.exists, 10)
    hang_started = marker.stat().st_mtime
    hang_pid = None

    # other jobs flow meanwhile (through the other process), and we watch for the replacement
    flowed = 0
    wrong: list[JobOutcome] = []
    replaced_at: float | None = None
    with TestClient(gearmand, timeout=30) as client:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            n = flowed + len(wrong)
            outcome = client.submit("f.hang.work", f"ok{n}".encode())
            if outcome.final == "complete" and outcome.result.decode().startswith(f"ok{n}:"):
                flowed += 1
            else:
                wrong.append(outcome)
            kids = set(driver.children())
            if hang_pid is None and len(before - kids) == 0:
                continue
            gone = before - kids
            if gone and hang_pid is None:
                hang_pid = gone.pop()
            if len(kids) == 2 and not kids <= before and replaced_at is None:
                replaced_at = time.time()
            if replaced_at is not None and hung:
                break
    thread.join(30)
    return {"driver": driver, "hang_started": hang_started, "replaced_at": replaced_at,
            "hang_pid": hang_pid, "flowed": flowed, "wrong": wrong, "hung": hung,
            "before": before}


@pytest.mark.slow
def test_hung_job_process_is_replaced_after_its_timeout(gearmand, driver_factory,
                                                       tmp_path: Path) -> None:
    r = run_hang(gearmand, driver_factory, tmp_path)
    driver = r["driver"]
    assert r["replaced_at"] is not None, "the hung process was never replaced"
    took = r["replaced_at"] - r["hang_started"]
    log = driver.log()
    line = next((x for x in log.splitlines() if "over its timeout" in x), "")
    peak = peak_rss_kb(driver.pid)
    hung = r["hung"]
    record_figures("job timeout (hangs forever, timeout: 2)",
                   sent=1 + r["flowed"] + len(r["wrong"]),
                   completed=r["flowed"] + sum(1 for o in hung if o.final == "complete"),
                   failed=len(r["wrong"]), lost=1 - len(hung), recover_s=took,
                   peak_rss_kb=peak,
                   notes=f"hung process replaced {took:.2f}s after the job started; "
                         f"{r['flowed']} other jobs completed meanwhile; the hung job was "
                         f"re-queued by gearmand and completed on a retry")
    assert 1.5 <= took <= 10, took
    assert r["flowed"] >= 10 and not r["wrong"]
    # gearmand re-queued the killed job; its retry completed for the waiting client
    assert len(hung) == 1 and hung[0].final == "complete"
    assert hung[0].result.decode().startswith("recovered in ")
    assert r["hang_pid"] is not None and str(r["hang_pid"]) in line
    assert "f.hang.work" in line
    ran = re.search(r"ran (\d+(?:\.\d+)?)s", line)
    assert ran and 2.0 <= float(ran.group(1)) < 10, line
    assert driver.proc.poll() is None


@pytest.mark.slow
def test_timeout_log_line_names_the_job_handle(gearmand, driver_factory,
                                               tmp_path: Path) -> None:
    """Found by this suite (fixed in c0d1dbf): the timeout line lacked the job's handle."""
    r = run_hang(gearmand, driver_factory, tmp_path)
    assert r["hung"] and r["hung"][0].handle
    handle = r["hung"][0].handle.decode()
    lines = [x for x in r["driver"].log().splitlines() if "over its timeout" in x]
    assert lines, "no timeout line logged"
    assert handle in lines[0], f"timeout log line does not name the handle {handle}: {lines[0]}"
