"""A SIGHUP that arrives while the master re-executes itself is not fatal.

A reload that changes `lib` makes the master drain and exec itself again. Until the new image
has installed its handlers, SIGHUP's default action would kill it; the signals are blocked
across the exec and handled once the new master is ready. Several rounds: each changes `lib`,
sends SIGHUP, then keeps sending SIGHUP every 20 ms from 50 ms later until the new master has
logged its start, so that some of them land in the exec window.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.faults.faultutil import SteadyLoad, record_figures
from tests.gearmand_util import wait_for

pytestmark = pytest.mark.slow

ROUNDS = 4


def test_sighup_during_the_exec_window_is_held_not_fatal(
        gearmand: int, driver_factory: Callable[..., DriverProcess], tmp_path: Path) -> None:
    fixtures = str(Path(__file__).parents[1] / "fixtures")
    extra = tmp_path / "extra"
    extra.mkdir()
    driver = driver_factory(gearmand, {"namespaces": ["tw.pair"]})
    assert driver.wait_registered("alpha.work", 1)
    sent = 0
    with SteadyLoad(gearmand, "alpha.work") as load:
        for round_no in range(1, ROUNDS + 1):
            starts = driver.log().count(" started (pid ")
            driver.rewrite_config({"lib": [fixtures] + ([str(extra)] if round_no % 2 else [])})
            driver.signal(signal.SIGHUP)
            time.sleep(0.05)
            deadline = time.monotonic() + 30
            while driver.log().count(" started (pid ") == starts:
                assert driver.proc is not None and driver.proc.poll() is None, \
                    f"round {round_no}: master died ({driver.proc.returncode})"
                assert time.monotonic() < deadline, driver.log()[-3000:]
                driver.signal(signal.SIGHUP)
                sent += 1
                time.sleep(0.02)
            # the held SIGHUPs are handled by the new master: one more (live) reload
            assert wait_for(lambda: "configuration reloaded" in
                            driver.log().rsplit(" started (pid ", 1)[1], 15), driver.log()[-3000:]
            assert wait_for(lambda: driver.registered("alpha.work") >= 1  # load scales it
                            and driver.registered("beta.opts") == 1, 15)
    assert driver.proc is not None and driver.proc.poll() is None
    assert driver.log().count("re-executing: ") == ROUNDS
    assert "Traceback" not in driver.log()
    assert load.sent > 0 and load.lost == 0
    record_figures("SIGHUP storm across re-exec", sent=load.sent, completed=load.completed,
                   failed=0, lost=load.lost, recover_s=None, peak_rss_kb=None,
                   notes=f"{ROUNDS} re-execs after a `lib` change, {sent} extra SIGHUPs every "
                         f"20 ms from 50 ms after each until the new master started; master "
                         f"alive throughout (same pid); held SIGHUPs handled by each new "
                         f"master as one reload")
