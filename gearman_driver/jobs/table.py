"""The job table: the single truth about jobs, their limits and the processes each one has.

A *job* is what gets processes: one Gearman function, or several joined in a process group.
The console, the scaling rule, STATUS and reload all read this table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from gearman_driver.api import Worker
from gearman_driver.scoreboard import Counters

LOST_HANDLES_KEPT = 256


class LoadError(Exception):
    """A user's mistake found while loading worker code: one line, exit status 78."""

    exit_status = 78


#: What worker code may raise where the master or a loader calls it: any exception, and
#: SystemExit too, so that a `sys.exit()` at import, in a constructor or in a callback is the
#: worker code's failure (a load error naming the module, a logged callback error), not the
#: silent exit of the daemon or of `--check-config`.
USER_CODE_ERRORS = (Exception, SystemExit)


@dataclass(frozen=True)
class MethodSpec:
    """One Gearman function served by a job."""

    function: str
    body: Callable[..., Any]
    encode: Callable[[Any], Any] | None = None
    decode: Callable[[Any], Any] | None = None
    exceptions: bool = False  # a raising job sends WORK_EXCEPTION with its text, not WORK_FAIL
    is_async: bool = False  # an `async def` method: its jobs run on the process's event loop


@dataclass(frozen=True)
class JobSpec:
    """A job as declared by its code, `job_runtime_attributes` or `add_job`: what runs, in which
    worker object, with which limits and options. A reload replaces it; nothing else changes it
    (the console's limits are the `Job`'s)."""

    name: str
    worker: Worker
    class_path: str
    methods: tuple[MethodSpec, ...]
    min_processes: int
    max_processes: int
    timeout: float | None = None
    max_jobs_per_process: int | None = None
    max_rss_mb: float | None = None  # from job_runtime_attributes; None: the top-level value
    worker_backend: str | None = None
    concurrency: int = 1  # jobs one process holds at once (slots)

    @cached_property  # read for every job each turn: with hundreds of jobs, worth keeping
    def functions(self) -> tuple[str, ...]:
        return tuple(method.function for method in self.methods)

    @cached_property
    def slotted(self) -> bool:
        """Its processes run the slots backend: several jobs at once, or `async def` methods
        (an event loop even for one slot)."""
        return self.concurrency > 1 or any(method.is_async for method in self.methods)


@dataclass
class Process:
    """A forked child of the master, as the master tracks it."""

    pid: int
    slot: int
    job: str
    started: float  # monotonic
    stopping: bool = False
    stop_reason: str = ""
    kill_at: float | None = None  # monotonic deadline for SIGKILL after a graceful stop
    cause: str = ""  # why the master first asked it to go (stop_reason may change on a kill)
    max_jobs: int = 0  # it exits by itself after this many jobs (0: never)
    max_rss_mb: float = 0.0  # ... or after a job that left it larger than this (0: never)
    servers: tuple[tuple[str, int], ...] = ()  # the servers it was started with, in order


@dataclass
class Job:
    """A job at run time: its spec, the limits the master enforces and its processes.

    A limit is the spec's unless the console set it since the spec was installed: one value
    each, never copied, so a reload (`respec`) brings the declared limits back by itself."""

    spec: JobSpec
    processes: dict[int, Process] = field(default_factory=dict)
    jobs_done: int = 0  # by processes that have exited; live ones are read from the scoreboard
    last_run: float = 0.0  # epoch seconds
    last_error: float = 0.0
    last_error_msg: str = ""
    failed_starts: int = 0  # in a row; reset by a process that works
    last_failed_start: float = 0.0  # monotonic; a result delivered after it ends the streak
    next_start_at: float = 0.0  # monotonic; backoff after failed starts
    lost_by_handle: dict[str, int] = field(default_factory=dict)  # deaths per job handle
    # Totals since the master started, for the metrics (live processes add their slots).
    counters: Counters = field(default_factory=Counters.zero)  # of processes that exited
    starts_total: int = 0
    failed_starts_total: int = 0
    timeouts_total: int = 0
    recycled_total: dict[str, int] = field(default_factory=dict)  # reason -> count
    _min_set: int | None = field(default=None, init=False, repr=False)  # by the console
    _max_set: int | None = field(default=None, init=False, repr=False)

    @property
    def min_processes(self) -> int:
        """The fewest processes the master keeps: the console's value, else the spec's."""
        return self.spec.min_processes if self._min_set is None else self._min_set

    @min_processes.setter
    def min_processes(self, value: int) -> None:
        self._min_set = value

    @property
    def max_processes(self) -> int:
        """The most processes the master starts: the console's value, else the spec's."""
        return self.spec.max_processes if self._max_set is None else self._max_set

    @max_processes.setter
    def max_processes(self, value: int) -> None:
        self._max_set = value

    def respec(self, spec: JobSpec) -> None:
        """Run as `spec` from now on (a reload): its limits replace any the console set."""
        self.spec = spec
        self._min_set = self._max_set = None

    def count_lost(self, handle: str) -> int:
        """One more process died holding `handle`; how many have (the newest handles kept)."""
        count = self.lost_by_handle.pop(handle, 0) + 1
        self.lost_by_handle[handle] = count
        if len(self.lost_by_handle) > LOST_HANDLES_KEPT:
            del self.lost_by_handle[next(iter(self.lost_by_handle))]
        return count

    @property
    def name(self) -> str:
        return self.spec.name

    def running(self) -> list[Process]:
        """Processes not being stopped: the ones that count towards the limits."""
        return [p for p in self.processes.values() if not p.stopping]


class JobTable(Mapping[str, Job]):
    """Jobs by name, in name order when iterated (as Gearman::Driver's get_jobs)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._by_pid: dict[int, Job] = {}
        self._order: list[Job] | None = None  # in_order(), until a job is added

    def add(self, spec: JobSpec) -> Job:
        if spec.name in self._jobs:
            raise LoadError(f"{spec.class_path}: job {spec.name!r} is defined twice")
        job = Job(spec)
        self._jobs[spec.name] = job
        self._order = None
        return job

    def in_order(self) -> list[Job]:
        """The jobs in name order, as iterating gives them, without sorting on every turn."""
        if self._order is None:
            self._order = [self._jobs[name] for name in sorted(self._jobs)]
        return self._order

    def __getitem__(self, name: str) -> Job:
        return self._jobs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._jobs))

    def __len__(self) -> int:
        return len(self._jobs)

    def add_process(self, job: Job, process: Process) -> None:
        job.processes[process.pid] = process
        self._by_pid[process.pid] = job

    def remove_process(self, pid: int) -> tuple[Job, Process] | None:
        job = self._by_pid.pop(pid, None)
        if job is None:
            return None
        return job, job.processes.pop(pid)

    def job_of(self, pid: int) -> Job | None:
        return self._by_pid.get(pid)

    def processes(self) -> Iterator[Process]:
        for job in self._jobs.values():
            yield from job.processes.values()
