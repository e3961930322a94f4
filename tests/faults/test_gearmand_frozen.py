"""gearmand frozen with SIGSTOP for 10 s: the master keeps answering and reaping, then scales."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.faults.faultutil import console, console_config, peak_rss_kb, record_figures
from tests.gearmand_util import TestClient, wait_for

FREEZE = 10.0


def gearmand_pid(port: int) -> int:
    """The gearmand fixture yields only a port: find its process by the --port argument."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"gearmand") and f"--port={port}".encode() in argv:
            return int(entry)
    raise LookupError(f"no gearmand on port {port}")


@pytest.mark.slow
def test_frozen_gearmand_does_not_freeze_the_master(gearmand, driver_factory) -> None:
    cport, cfg = console_config()
    driver = driver_factory(gearmand, {"namespaces": ["tw.faults.slow"], "interval": 1,
                                       "max_idle_time": 30, **cfg})
    assert driver.wait_registered("f.slow.sleep", 1)
    gpid = gearmand_pid(gearmand)
    # a child that delivered a result is no failed start when it dies: it is replaced at once
    with TestClient(gearmand, timeout=10) as client:
        assert client.submit("f.slow.sleep", b"0").final == "complete"

    answered: list[float] = []
    failures: list[str] = []
    stop_polling = threading.Event()

    def poll() -> None:
        while not stop_polling.is_set():
            t0 = time.monotonic()
            try:
                lines = console(cport, "status", timeout=1.0)
                assert any(line.startswith("f.slow.sleep") for line in lines), lines
                answered.append(time.monotonic() - t0)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{time.monotonic() - t0:.2f}s: {exc!r}")
            stop_polling.wait(max(0.0, 0.5 - (time.monotonic() - t0)))

    poller = threading.Thread(target=poll, daemon=True)
    replaced_after: float | None = None
    try:
        before = driver.children()
        assert len(before) == 1
        os.kill(gpid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        poller.start()
        # the master's poll of the frozen gearmand has timed out: it scales without it now
        assert wait_for(lambda: f"gearmand 127.0.0.1:{gearmand} is down" in driver.log()
                        or f"gearmand localhost:{gearmand} is down" in driver.log(), FREEZE / 2)
        os.kill(before[0], signal.SIGKILL)
        killed_at = time.monotonic()
        replaced = wait_for(lambda: len(driver.children()) == 1
                            and driver.children() != before, 5)
        if replaced:
            replaced_after = time.monotonic() - killed_at
        still_frozen = time.monotonic() - frozen_at < FREEZE
        time.sleep(max(0.0, FREEZE - (time.monotonic() - frozen_at)))
    finally:
        os.kill(gpid, signal.SIGCONT)
    thawed_at = time.monotonic()
    stop_polling.set()
    poller.join(5)
    polls_in_freeze = len(answered) + len(failures)

    assert replaced and still_frozen, "the killed child was not replaced while gearmand was stopped"
    assert driver.proc is not None and driver.proc.poll() is None
    assert not failures, failures[:5]
    assert polls_in_freeze >= 15  # ~every 0.5 s for ~10 s

    # scaling resumes: a burst of 1 s jobs grows the job beyond its one process
    assert driver.wait_registered("f.slow.sleep", 1, timeout=10)
    registered_again = time.monotonic() - thawed_at
    with TestClient(gearmand) as client:
        for _ in range(16):
            client.submit_bg("f.slow.sleep", b"1")
    burst_at = time.monotonic()
    assert wait_for(lambda: len(driver.children()) >= 4, 15), driver.log()[-2000:]
    grown = time.monotonic() - burst_at
    assert wait_for(lambda: gearmand_status_done(gearmand), 30)
    peak = peak_rss_kb(driver.pid)
    slowest_ms = max(answered) * 1000
    replaced_ms = (replaced_after or 0.0) * 1000
    record_figures("gearmand frozen (SIGSTOP 10 s)", sent=16, completed=16, failed=0, lost=0,
                   recover_s=registered_again, peak_rss_kb=peak,
                   notes=f"{len(answered)}/{polls_in_freeze} console polls answered during the "
                         f"freeze (slowest {slowest_ms:.0f} ms); killed child replaced in "
                         f"{replaced_ms:.0f} ms while gearmand was stopped; after SIGCONT workers "
                         f"registered in {registered_again * 1000:.0f} ms, burst grew 1 -> 4+ "
                         f"processes in {grown:.2f}s",
                   console_max_ms=round(max(answered) * 1000))


def gearmand_status_done(port: int) -> bool:
    from tests.gearmand_util import status_table

    total = status_table(port).get("f.slow.sleep", (0, 0, 0))[0]
    return total == 0
