"""Starting, stopping and reaping worker processes: fork safely, stop gracefully, never loop.

A process that exits within FAILED_START_WINDOW of its start without delivering a result, or
that dies at any age holding a job whose result it has not sent (the scoreboard says BUSY until
the result is written to gearmand's socket), is a failed start: the job's next start is delayed
exponentially (1 s, 2 s, … capped at 60 s; from 0.1 s for a death holding a job, which gearmand
re-queues for the replacement — a likely poison job), so no crash pattern turns into a fork
loop. A process that dies idle after delivering results is replaced at once.

A start that cannot happen at all (fork fails with EAGAIN under a pids cgroup or RLIMIT_NPROC,
or every scoreboard slot is taken) holds every start of the driver back for FORK_RETRY_BASE
seconds, doubling up to FORK_RETRY_CAP, and is logged once per streak, not once per attempt.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from gearman_driver import gcpolicy
from gearman_driver.child.process import run_child
from gearman_driver.jobs.options import JobOptions
from gearman_driver.jobs.table import Job, JobTable, Process
from gearman_driver.logs import about_job
from gearman_driver.scoreboard import Scoreboard, SlotView, SlotWriter, State

log = logging.getLogger("gearman_driver.processes")

Server = tuple[str, int]

FAILED_START_WINDOW = 5.0
BACKOFF_BASE = 1.0
POISON_BACKOFF_BASE = 0.1
BACKOFF_CAP = 60.0
FORK_RETRY_BASE = 0.5
FORK_RETRY_CAP = 30.0
#: Why a replaced process went (gearman_driver_recycled_total's reason), by the cause the
#: master gave; a process that exits by itself is "max_jobs", "max_rss" or "died".
RECYCLE_REASONS = {"reload": "reload", "re-exec": "reload", "job timeout": "job_timeout",
                   "console kill": "console", "console killall": "console"}
#: Every reason a process is counted as recycled for, in the metrics' order.
RECYCLED_FOR = ("max_jobs", "max_rss", "job_timeout", "reload", "console", "died")
FORK_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD,
                signal.SIGUSR1, signal.SIGUSR2}


class StartRequest(NamedTuple):
    """`number` more processes for `job`, and why (the log line says it)."""

    job: Job
    number: int
    reason: str


class _Start(NamedTuple):
    """One fork of a batch, prepared before the first fork of it."""

    job: Job
    reason: str
    slot: int
    options: JobOptions
    max_jobs: int
    writer: SlotWriter


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"killed by {name}"
    return f"exit status {os.WEXITSTATUS(status)}"


class ProcessManager:
    """Owns the children of the master: the only code that forks, signals or reaps them."""

    def __init__(
        self,
        jobs: JobTable,
        scoreboard: Scoreboard,
        *,
        servers: Callable[[], list[tuple[str, int]]],
        options: Callable[[Job], JobOptions],
        graceful_timeout: Callable[[], float],
        close_inherited: Callable[[], None],
        send_signal: Callable[[int, int], None] = os.kill,
        wall: Callable[[], float] = time.time,
        on_other_exit: Callable[[int], object] | None = None,
    ) -> None:
        self.jobs = jobs
        self.scoreboard = scoreboard
        self._servers = servers
        self._options = options  # the job's effective options (jobs/options.py)
        self._graceful_timeout = graceful_timeout
        self._close_inherited = close_inherited
        self._send_signal = send_signal
        self._wall = wall  # the clock of the scoreboard's job_started (a job's timeout)
        # told of a reaped child that is no job's process (a reload's trial), so that whoever
        # started it knows its pid is free and never signals it again
        self._on_other_exit = on_other_exit
        self.master_pid = os.getpid()
        self.start_failures = 0  # starts in a row that could not fork (or found no slot)
        self._retry_starts_at = 0.0
        self._reconnects: dict[Server, int] = {}  # by processes that have exited

    # -- failed-start accounting (here only) -----------------------------------------------
    @staticmethod
    def note_working(job: Job, view: SlotView) -> None:
        """A process of `job` delivered a result: the job works, the next failure is new."""
        if view.delivered and job.failed_starts:
            job.failed_starts = 0

    @staticmethod
    def forget_failures(job: Job) -> None:
        """A reload gave the job a new spec: start it again at once, as a new job."""
        job.failed_starts, job.next_start_at = 0, 0.0

    # -- start -----------------------------------------------------------------------------
    def can_start(self, job: Job, now: float) -> bool:
        return now >= job.next_start_at and now >= self._retry_starts_at

    def next_start_due(self, now: float) -> float | None:
        """When the earliest backed-off start may happen (None: none is waiting).

        The loop wakes then rather than at its next event: otherwise deaths that come faster
        than its turns (a kill -9 storm) each push the start back and starve the job."""
        due = [job.next_start_at for job in self.jobs.in_order() if job.next_start_at > now]
        if self._retry_starts_at > now:
            due.append(self._retry_starts_at)
        return min(due, default=None)

    def _cannot_start(self, job: Job, why: str) -> None:
        """Back every start off; say so once per streak of failures, not once per attempt."""
        self.start_failures += 1
        delay = min(FORK_RETRY_CAP, FORK_RETRY_BASE * 2.0 ** (self.start_failures - 1))
        self._retry_starts_at = time.monotonic() + delay
        if self.start_failures == 1:
            log.error("cannot start a process for %s: %s; retrying every start in %gs, "
                      "backing off up to %gs (logged once until a start succeeds)",
                      job.name, why, delay, FORK_RETRY_CAP, extra=about_job(job.name))
        else:
            log.debug("start %d in a row failed for %s: %s; next try in %gs",
                      self.start_failures, job.name, why, delay)

    def start_batch(self, requests: Sequence[StartRequest]) -> list[int]:
        """Fork the processes `requests` ask for in one tight loop, then record them; returns
        the pids started. Stops at the first start that cannot happen (no free scoreboard
        slot, fork failed), which holds every start back (see the module docstring).

        Why everything is prepared before the first fork and recorded after the last: each
        page the master writes between two forks is copied, and the child forked before keeps
        the old one for itself. The bookkeeping of one start (the objects it makes, the
        reference counts of everything it reads) wrote ~0.4 MB of pages per child that way
        (docs/benchmarks.md, Footprint); after the loop, the children of a batch share them."""
        planned, no_slot_for = self._plan(requests)
        if not planned:
            if no_slot_for is not None:
                self._no_slot(no_slot_for)
            return []
        servers, graceful_timeout = self._servers(), self._graceful_timeout()
        for handler in logging.getLogger().handlers:
            handler.flush()
        # last, so that what the batch just made (slot writers, plans) is frozen too: left in
        # the young generation, each child's first collection would walk, and so copy, the
        # pages of every start of the batch (0.7 MB per child with 500 starts, measured)
        gcpolicy.before_fork()
        pids: list[int] = []
        failure: OSError | None = None
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_SIGNALS)
        try:
            for start in planned:
                pid = os.fork()
                if pid == 0:
                    run_child(
                        start.job.spec,
                        servers=servers,
                        master_pid=self.master_pid,
                        writer=start.writer,
                        backend_name=start.options.backend,
                        graceful_timeout=graceful_timeout,
                        max_jobs=start.max_jobs,
                        close_inherited=self._close_inherited,
                        max_rss_mb=start.options.max_rss_mb,
                        max_workload=start.options.max_workload,
                        keepalive=start.options.keepalive,
                    )
                pids.append(pid)
        except OSError as exc:
            failure = exc
        finally:
            if os.getpid() == self.master_pid:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        now = time.monotonic()
        started_with = tuple(servers)
        for start, pid in zip(planned, pids, strict=False):  # planned: also those not forked
            job = start.job
            self.jobs.add_process(job, Process(pid, start.slot, job.name, now,
                                               max_jobs=start.max_jobs,
                                               max_rss_mb=start.options.max_rss_mb,
                                               servers=started_with))
            job.starts_total += 1
            log.info("started process %d for %s (%s)", pid, job.name, start.reason,
                     extra=about_job(job.name))
        for start in planned[len(pids):]:
            self.scoreboard.release(start.slot)
        if pids and self.start_failures:
            log.warning("started a process again after %d failed start(s)", self.start_failures)
            self.start_failures = 0
        if failure is not None:
            self._cannot_start(planned[len(pids)].job, f"fork failed: {failure}")
        elif no_slot_for is not None:
            self._no_slot(no_slot_for)
        return pids

    def _plan(self, requests: Sequence[StartRequest]) -> tuple[list[_Start], Job | None]:
        """Every start of the batch with its slot, options and slot writer; and the job that
        found no free slot, where the plan stopped (None: every start has one)."""
        planned: list[_Start] = []
        for request in requests:
            options = self._options(request.job)
            limit, jitter = options.max_jobs, options.max_jobs_jitter
            for _ in range(request.number):
                try:
                    slot = self.scoreboard.allocate(slots=options.concurrency)
                except IndexError:
                    return planned, request.job
                max_jobs = limit + (random.randint(0, jitter) if limit and jitter else 0)
                planned.append(_Start(request.job, request.reason, slot, options, max_jobs,
                                      self.scoreboard.child_writer(slot)))
        return planned, None

    def _no_slot(self, job: Job) -> None:
        self._cannot_start(job, f"all {self.scoreboard.size} scoreboard slots in use (the "
                                "ceiling of processes per driver)")

    # -- stop ------------------------------------------------------------------------------
    def stop(self, process: Process, reason: str, now: float | None = None) -> None:
        """Ask a process to finish the job in hand and exit; SIGKILL after graceful_timeout."""
        if process.stopping:
            return
        now = time.monotonic() if now is None else now
        process.stopping = True
        process.stop_reason = process.cause = reason
        process.kill_at = now + self._graceful_timeout()
        self._signal(process.pid, signal.SIGTERM)
        log.info("stopping process %d of %s (%s)", process.pid, process.job, reason,
                 extra=about_job(process.job))

    def kill(self, process: Process, reason: str) -> None:
        """SIGKILL: for a process past its graceful deadline or its job timeout."""
        if not process.stopping:
            process.cause = reason
        process.stopping = True
        process.stop_reason = reason
        process.kill_at = None
        self._signal(process.pid, signal.SIGKILL)
        log.warning("killed process %d of %s (%s)", process.pid, process.job, reason,
                    extra=about_job(process.job))

    def signal_all(self, signum: int) -> None:
        """Send `signum` to every process of every job (e.g. the log level changed)."""
        for process in list(self.jobs.processes()):
            self._signal(process.pid, signum)

    def _signal(self, pid: int, signum: int) -> None:
        try:
            self._send_signal(pid, signum)
        except ProcessLookupError:
            pass  # already gone; the reaper will see it

    def enforce_deadlines(self, now: float) -> None:
        """Escalate graceful stops that took too long, and kill jobs past their timeout."""
        wall = self._wall()
        for process in list(self.jobs.processes()):
            if process.kill_at is not None and now >= process.kill_at:
                self.kill(process, f"still running {self._graceful_timeout():g}s after "
                                   f"{process.stop_reason}")
                continue
            job = self.jobs[process.job]
            timeout = job.spec.timeout
            if timeout and not process.kill_at and not job.spec.slotted:  # slots time their own
                view = self.scoreboard.read(process.slot)
                if view.busy and wall - view.job_started > timeout:
                    functions = job.spec.functions  # a process group's: which one is unknown
                    log.error("job %s of %s ran %.1fs, over its timeout of %gs: killing "
                              "process %d", view.handle or "?", job.name,
                              wall - view.job_started, timeout, process.pid,
                              extra=about_job(job.name, view.handle,
                                              functions[0] if len(functions) == 1 else ""))
                    job.timeouts_total += 1
                    self.kill(process, "job timeout")

    # -- reap ------------------------------------------------------------------------------
    def reap(self, now: float) -> int:
        """Collect every exited child (several may exit for one SIGCHLD)."""
        count = 0
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            count += 1
            found = self.jobs.remove_process(pid)
            if found is None:
                if self._on_other_exit is not None:
                    self._on_other_exit(pid)
                continue
            job, process = found
            view = self.scoreboard.read(process.slot)
            job.counters.add(self.scoreboard.counters(process.slot))
            self._add_reconnects(self._reconnects, process)
            self.scoreboard.release(process.slot)
            self._fold(job, view)
            self.account_exit(job, process, view, status, now)
        return count

    def reconnects(self) -> dict[Server, int]:
        """How often worker processes connected again to each server after losing it: those
        that exited, and the live ones from the scoreboard."""
        totals = dict(self._reconnects)
        for process in self.jobs.processes():
            self._add_reconnects(totals, process)
        return totals

    def _add_reconnects(self, totals: dict[Server, int], process: Process) -> None:
        counts = self.scoreboard.reconnects(process.slot)
        for server, count in zip(process.servers, counts, strict=False):
            if count:
                totals[server] = totals.get(server, 0) + count

    @staticmethod
    def _fold(job: Job, view: SlotView) -> None:
        """Keep a dead process's figures in its job's totals."""
        job.jobs_done += view.jobs_done
        job.last_run = max(job.last_run, view.last_job_end)
        if view.last_error > job.last_error:
            job.last_error = view.last_error
            job.last_error_msg = view.last_error_msg

    def _delivered_since(self, job: Job, since: float) -> bool:
        """Has a live process of `job` sent a result since `since` (monotonic)?

        A streak of failed starts means the job cannot work at all; a sibling's fresh result
        proves it can, so a kill -9 amid healthy siblings costs one short wait, not a ramp.
        A poison job still ramps: its handle's own death count is never reset by siblings."""
        for other in job.processes.values():
            view = self.scoreboard.read(other.slot)
            if view.delivered and view.last_job_end_mono > since:
                return True
        return False

    def account_exit(self, job: Job, process: Process, view: SlotView, status: int,
                     now: float) -> None:
        """An exited process of `job`: a failed start (and its backoff), or replaced at once;
        counted as recycled for its reason."""
        how = describe_status(status)
        if process.stopping:
            log.info("process %d of %s exited (%s; %s)", process.pid, job.name,
                     process.stop_reason, how, extra=about_job(job.name))
            _count_recycled(job, RECYCLE_REASONS.get(process.cause))
            return
        lived = now - process.started
        # its job is back in gearmand's queue, for the next worker
        lost = view.state in (State.BUSY, State.LOST)
        if lost or (lived < FAILED_START_WINDOW and view.delivered == 0):
            # A death holding a job: gearmand hands that job straight to the replacement, so
            # replacing at once would fork as fast as the job kills. Such a process did start,
            # so its backoff ramps from a shorter first step; and the step counts the deaths
            # this very job (handle) caused, which a healthy sibling's results do not reset.
            if self._delivered_since(job, job.last_failed_start):
                job.failed_starts = 0  # the job works for its siblings: this failure is new
            job.failed_starts += 1
            job.failed_starts_total += 1
            job.last_failed_start = now
            steps = job.failed_starts
            if lost and view.handle:
                steps = max(steps, job.count_lost(view.handle))
            base = POISON_BACKOFF_BASE if lost else BACKOFF_BASE
            delay = min(BACKOFF_CAP, base * 2.0 ** (steps - 1))
            job.next_start_at = now + delay
            if lost:
                message = (f"process died {lived:.1f}s after its start holding job "
                           f"{view.handle or '?'} before its result was sent ({how})")
            else:
                message = f"process exited {lived:.1f}s after its start ({how})"
            job.last_error, job.last_error_msg = time.time(), message
            log.error("process %d of %s failed to start: %s; %d failed start(s) in a row, "
                      "next start in %gs", process.pid, job.name, message, steps, delay,
                      extra=about_job(job.name, view.handle if lost else ""))
        else:
            job.failed_starts = 0
            job.next_start_at = 0.0
            level = logging.INFO if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 \
                else logging.WARNING
            log.log(level, "process %d of %s exited after %d jobs (%s); replacing it",
                    process.pid, job.name, view.jobs_done, how, extra=about_job(job.name))
            reason = "died"
            if level == logging.INFO:  # exit status 0 unasked: it recycled itself
                if process.max_jobs and view.jobs_done >= process.max_jobs:
                    reason = "max_jobs"
                elif process.max_rss_mb:
                    reason = "max_rss"
            _count_recycled(job, reason)


def _count_recycled(job: Job, reason: str | None) -> None:
    if reason is not None:
        job.recycled_total[reason] = job.recycled_total.get(reason, 0) + 1
