"""The scaling rule: figures in, numbers out.

Pure on purpose (no I/O, no clock): the master gathers the figures — the scoreboard for its
processes, the observer's snapshot for gearmand's queue, the number of peer drivers — and
asks `decide` what to do. Everything here is testable without a process or a server.

The rule follows Gearman::Driver's observer callback: start processes only when every
running one is busy and jobs are waiting; stop idle ones once nothing waits and they have
idled long enough. Three things are ours: a busy process is never chosen to stop (a job in
hand always completes); with several drivers serving the same functions each starts only
its share of the waiting jobs, so N drivers don't each start the whole backlog; and a job
whose processes hold several jobs at once (`concurrency`) counts slots: a process is started
when the waiting jobs exceed the free slots, as many as the jobs beyond them need, and only a
process whose every slot is idle may be stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Decision", "JobFigures", "ProcessFigures", "decide"]


@dataclass(frozen=True, slots=True)
class ProcessFigures:
    """What the master knows about one of a job's processes."""

    pid: int
    #: At least one of its slots holds a job.
    busy: bool
    #: Seconds since the process finished its last job, or since it started if it did none.
    idle_for: float
    #: Already asked to stop: it neither counts as running nor can be chosen again.
    stopping: bool = False
    #: Jobs it can hold at once, and how many it holds now (a process of one slot: `busy`).
    slots: int = 1
    busy_slots: int = 0

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - (self.busy_slots if self.slots > 1 else int(self.busy)))


@dataclass(frozen=True, slots=True)
class JobFigures:
    """Everything `decide` needs about one job."""

    name: str
    min_processes: int
    max_processes: int
    processes: Sequence[ProcessFigures]
    #: Jobs waiting in gearmand for this job's functions, Σ(total − running) over them;
    #: None when there is no snapshot (every server down, or no poll yet).
    waiting: int | None
    #: Drivers serving this job's functions, us included. Values below 1 count as 1.
    drivers: int = 1
    max_idle_time: float = 0.0
    #: Slots of each new process (`concurrency`).
    concurrency: int = 1


@dataclass(frozen=True, slots=True)
class Decision:
    """Start `start` new processes; ask the processes `stop` (pids) to finish and exit."""

    start: int = 0
    stop: tuple[int, ...] = ()


def _idle_longest_first(processes: Sequence[ProcessFigures]) -> list[ProcessFigures]:
    # Ties broken by pid so the same figures always give the same decision.
    idle = [p for p in processes if not p.busy]
    idle.sort(key=lambda p: (-p.idle_for, p.pid))
    return idle


def decide(job: JobFigures) -> Decision:
    """Apply the limits, then scale up or down; never choose a busy process to stop."""
    live = [p for p in job.processes if not p.stopping]
    running = len(live)
    # Limits are checked where they enter (config, console, add_job), never here in the loop:
    # should impossible ones arrive anyway, max wins and nothing is negative.
    hi = max(0, job.max_processes)
    lo = min(max(0, job.min_processes), hi)
    waiting = None if job.waiting is None else max(0, job.waiting)
    drivers = max(1, job.drivers)

    stop: list[int] = []
    idle = _idle_longest_first(live)

    # Limits. Over max is resolved with idle processes only; busy ones go once they are idle.
    if running > hi:
        chosen = idle[: running - hi]
        stop.extend(p.pid for p in chosen)
        idle = idle[len(chosen) :]
    start = max(0, lo - running)

    if waiting is None:
        return Decision(start=start, stop=tuple(stop))

    remaining = running - len(stop)
    if waiting > 0:
        share = math.ceil(waiting / drivers)  # our share: each driver has its own max
        if job.concurrency <= 1:
            # Scale up only when nobody is free to take the waiting jobs.
            if all(p.busy for p in live) and remaining < hi:
                start = max(start, min(share, hi - remaining))
        else:
            free = sum(p.free_slots for p in live if p.pid not in stop)
            if share > free and remaining < hi:
                needed = math.ceil((share - free) / job.concurrency)
                start = max(start, min(needed, hi - remaining))
    elif remaining > lo:
        for p in idle:
            if remaining <= lo:
                break
            if p.idle_for >= job.max_idle_time:
                stop.append(p.pid)
                remaining -= 1
    return Decision(start=start, stop=tuple(stop))
