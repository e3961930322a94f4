"""Observe gearmand and scale every job: the master's 'observe → decide → start/stop' step.

Each fresh snapshot of gearmand's queue is used once per job to scale up or down (as
Gearman::Driver did once per interval); every other turn only the limits are applied, so a
stale snapshot never starts or stops anything twice. When every process of a job is busy,
the scoreboard says so at once and a poll is started right away instead of at the next
interval: a burst is met in one round trip to gearmand.
"""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gearman_driver.config.settings import Settings
from gearman_driver.jobs.table import USER_CODE_ERRORS, Job, JobTable, Process
from gearman_driver.master.observer import Observer, ServerSeen, Snapshot, driver_peers
from gearman_driver.master.processes import StartRequest
from gearman_driver.master.scaling import JobFigures, ProcessFigures, decide
from gearman_driver.scoreboard import SlotView, State

log = logging.getLogger("gearman_driver.autoscaler")

SATURATION_POLL_GAP = 0.05


class Processes(Protocol):
    """What scaling may do with processes (master/processes.py's ProcessManager)."""

    def can_start(self, job: Job, now: float) -> bool: ...
    def start_batch(self, requests: Sequence[StartRequest]) -> list[int]: ...
    def stop(self, process: Process, reason: str, now: float | None = None) -> None: ...
    def note_working(self, job: Job, view: SlotView) -> None: ...


class SlotReader(Protocol):
    """The scoreboard as scaling reads it."""

    def read(self, slot: int) -> SlotView: ...
    def busy(self, slot: int) -> bool: ...
    def full(self, slot: int) -> bool: ...


class Autoscaler:
    """Owns the observer and turns its snapshots and the scoreboard into starts and stops.

    It is given the job table, the scoreboard, the process manager, the settings and the
    driver's id; it never sees the master itself. `observer` makes the gearmand observer
    (tests pass one that replays scripted snapshots); `wall` is the clock the scoreboard's
    times are read against."""

    def __init__(self, jobs: JobTable, scoreboard: SlotReader, processes: Processes,
                 selector: selectors.BaseSelector | None, settings: Settings, *,
                 driver_id: str,
                 on_unknown: Callable[[dict[str, Any]], None] | None = None,
                 observer: Callable[..., Any] = Observer,
                 wall: Callable[[], float] = time.time) -> None:
        self.jobs = jobs
        self.scoreboard = scoreboard
        self.processes = processes
        self.selector = selector
        self.settings = settings
        self.driver_id = driver_id
        self.on_unknown = on_unknown
        self._make_observer = observer
        self._wall = wall
        self.observer: Any = None
        self._used: dict[str, float] = {}  # job name -> taken_at of the snapshot it acted on
        self._next_poll = 0.0
        self._last_saturation_poll = 0.0
        self._warned_unknown: set[str] = set()
        self._open_observer()

    @property
    def snapshot(self) -> Snapshot | None:
        return self.observer.snapshot if self.observer is not None else None

    def servers_seen(self) -> list[ServerSeen]:
        """Each configured server's state and our processes on it (console `servers`,
        metrics, STATUS); all `unknown` while nothing polls (interval 0)."""
        if self.observer is None:
            return [ServerSeen(server, "unknown", 0) for server in self.settings.server]
        seen: list[ServerSeen] = self.observer.seen(self.driver_id)
        return seen

    def configure(self, settings: Settings) -> None:
        """New settings after a reload: a new observer when the servers or the interval
        changed; max_idle_time and keepalive apply from the next decision and poll."""
        old, self.settings = self.settings, settings
        if (old.server, old.interval) != (settings.server, settings.interval):
            self._open_observer()
        elif self.observer is not None:
            self.observer.keepalive = settings.keepalive

    def _open_observer(self) -> None:
        """(Re)create the observer for the servers; interval 0 turns scaling off."""
        self.close()
        settings = self.settings
        if settings.interval > 0:
            self.observer = self._make_observer(
                settings.server, self.selector,
                timeout=max(1.0, min(5.0, settings.interval * 2)),
                keepalive=settings.keepalive, on_snapshot=self._on_snapshot)
        self._next_poll = 0.0

    def close(self) -> None:
        if self.observer is not None:
            self.observer.close()
            self.observer = None

    def close_in_child(self) -> None:
        if self.observer is not None:
            self.observer.close_in_child()

    def tick(self, now: float, polling: bool) -> None:
        """Time out a hung poll; start the next one when the interval has passed."""
        if self.observer is None:
            return
        self.observer.tick(now)
        if polling and now >= self._next_poll and self.observer.start_poll(now):
            self._next_poll = now + self.settings.interval

    def manage(self, now: float) -> None:
        """Bring every job within its limits, and scale it from a fresh snapshot once."""
        processes = self.processes
        snapshot = self.snapshot
        saturated = False
        starts: list[StartRequest] = []
        for job in self.jobs.in_order():
            waiting: int | None = None
            drivers = 1
            if snapshot is not None and snapshot.servers_up and \
                    self._used.get(job.name) != snapshot.taken_at:
                self._used[job.name] = snapshot.taken_at
                waiting = snapshot.waiting(job.spec.functions)
                if waiting:  # peers matter only when there is a shortfall to share
                    drivers = len(driver_peers(snapshot, job.spec.functions)
                                  | {self.driver_id})
                elif not job.failed_starts and len(live := job.running()) == job.min_processes:
                    # nothing queued and at its minimum: the rule could neither start nor stop
                    # one (the common poll of an idle job; with hundreds of jobs it adds up)
                    saturated = saturated or self._saturated(job, live)
                    continue
            elif job.min_processes <= len(live := job.running()) <= job.max_processes:
                # nothing new to decide on (the common idle turn): only watch for saturation
                saturated = saturated or self._saturated(job, live)
                continue
            figures = self._figures(job, waiting, drivers)
            decision = decide(figures)
            if decision.start and processes.can_start(job, now):
                # after a failed start, one process at a time probes whether the job works
                starts.append(StartRequest(job, 1 if job.failed_starts else decision.start,
                                           "scale up" if waiting else "min_processes"))
            else:  # a job about to get processes has room being filled: not saturated
                saturated = saturated or self._saturated(job)
            for pid in decision.stop:
                process = job.processes.get(pid)
                if process is not None:
                    processes.stop(process, "idle" if waiting == 0 else "max_processes")
        if starts:  # every job's starts in one batch: see ProcessManager.start_batch
            processes.start_batch(starts)
        if saturated and self.observer is not None and \
                now - self._last_saturation_poll >= SATURATION_POLL_GAP:
            if self.observer.start_poll(now):
                self._last_saturation_poll = now

    def _saturated(self, job: Job, live: list[Process] | None = None) -> bool:
        """Every running process busy and room for more: worth asking gearmand right now."""
        live = job.running() if live is None else live
        if not live or len(live) >= job.max_processes:
            return False
        if job.spec.concurrency > 1:  # every slot of every process holds a job
            return all(self.scoreboard.full(p.slot) for p in live)
        return all(self.scoreboard.busy(p.slot) for p in live)  # one byte each, no SlotView

    def _figures(self, job: Job, waiting: int | None, drivers: int) -> JobFigures:
        wall = self._wall()
        processes = []
        for process in job.processes.values():
            view = self.scoreboard.read(process.slot)
            self.processes.note_working(job, view)
            since = view.last_job_end if view.last_job_end else view.started
            processes.append(ProcessFigures(process.pid, view.state == State.BUSY,
                                            max(0.0, wall - since), process.stopping,
                                            view.slots, view.busy_slots))
        return JobFigures(job.name, job.min_processes, job.max_processes, processes, waiting,
                          drivers, self.settings.max_idle_time, job.spec.concurrency)

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        """Functions with queued jobs that no job of ours serves: callback, or warn once."""
        ours = {f for job in self.jobs.in_order() for f in job.spec.functions}
        for name, status in snapshot.functions.items():
            if name in ours or status.total <= 0:
                continue
            info = {"name": name, "queue": status.total, "busy": status.running,
                    "free": max(0, status.available_workers - status.running),
                    "running": status.available_workers}
            if self.on_unknown is not None:
                try:
                    self.on_unknown(info)
                except USER_CODE_ERRORS:  # sys.exit() there must not end the master
                    log.exception("unknown_job_callback failed for %s", name)
            elif name not in self._warned_unknown:
                self._warned_unknown.add(name)
                log.warning("gearmand has %d jobs queued for %s, which no job of ours serves",
                            status.total, name)
