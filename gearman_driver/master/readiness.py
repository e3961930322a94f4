"""When the master tells systemd READY=1: once every job's min_processes are registered with
gearmand, or running while gearmand cannot be reached (so `systemctl start` does not hang on
a gearmand that is down), or 5 s after they run while some are not registered yet.

A decision from the job table, the scoreboard and the observer's snapshot; the master sends
the notification."""

from __future__ import annotations

from typing import Protocol

from gearman_driver.jobs.table import JobTable
from gearman_driver.master.observer import Snapshot
from gearman_driver.scoreboard import SlotView, State

UNREGISTERED_GRACE = 5.0


class SlotReader(Protocol):
    def read(self, slot: int) -> SlotView: ...


class Readiness:
    """Asked every turn until it says yes once."""

    def __init__(self) -> None:
        self._unregistered_since: float | None = None

    def ready(self, jobs: JobTable, scoreboard: SlotReader, snapshot: Snapshot | None,
              now: float) -> bool:
        unregistered = False
        for job in jobs.values():
            live = job.running()
            if len(live) < job.min_processes and job.failed_starts == 0:
                return False  # still starting (a job that fails to start does not hold READY)
            for process in live:
                view = scoreboard.read(process.slot)
                if view.state == State.STARTING:
                    return False
                unregistered = unregistered or view.registered == 0
        if unregistered:
            self._unregistered_since = self._unregistered_since or now
            if not (snapshot is not None and snapshot.servers_down) and \
                    now - self._unregistered_since < UNREGISTERED_GRACE:
                return False
        return True
