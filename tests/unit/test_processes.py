"""The process manager's accounting without forking: failed starts and their backoff,
recycling reasons, and the deadlines it enforces (signals go to a recorder, not to pids)."""

from __future__ import annotations

import errno
import gc
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

import gearman_driver.master.processes as processes_module
from gearman_driver.jobs.options import JobOptions
from gearman_driver.jobs.table import Job, JobSpec, JobTable, MethodSpec, Process
from gearman_driver.master.processes import (
    BACKOFF_CAP,
    FAILED_START_WINDOW,
    POISON_BACKOFF_BASE,
    ProcessManager,
    StartRequest,
)
from gearman_driver.protocol import DEFAULT_MAX_PACKET
from gearman_driver.scoreboard import Scoreboard, SlotWriter, State

EXITED_0, EXITED_1, KILLED = 0, 1 << 8, signal.SIGKILL


class Rig:
    def __init__(self, timeout: float | None = None, graceful: float = 30.0) -> None:
        self.jobs = JobTable()
        self.job = self.jobs.add(JobSpec("resize", object(), "t.Images",  # type: ignore[arg-type]
                                         (MethodSpec("resize", lambda job, data: data),), 1, 4,
                                         timeout=timeout))
        self.board = Scoreboard(8)
        self.signals: list[tuple[int, int]] = []
        self.wall = [10_000.0]
        options: Callable[[Job], JobOptions] = lambda job: JobOptions(  # noqa: E731
            "native", 0, 0, 0.0, DEFAULT_MAX_PACKET, job.spec.timeout)
        self.manager = ProcessManager(
            self.jobs, self.board, servers=lambda: [], options=options,
            graceful_timeout=lambda: graceful, close_inherited=lambda: None,
            send_signal=lambda pid, signum: self.signals.append((pid, signum)),
            wall=lambda: self.wall[0])
        self.next_pid = 500

    def process(self, started: float = 0.0, *, delivered: int = 0, busy: bool = False,
                handle: bytes = b"H:1") -> Process:
        self.next_pid += 1
        slot = self.board.allocate()
        writer = self.board.child_writer(slot)
        writer.ready(self.next_pid)
        for _ in range(delivered):
            writer.job_started(handle)
            writer.job_finished(None)
            writer.result_sent(True)
        if busy:
            writer.job_started(handle)
        process = Process(self.next_pid, slot, "resize", started)
        self.jobs.add_process(self.job, process)
        return process

    def exit(self, process: Process, status: int, now: float) -> None:
        """What reap does once waitpid returned this process."""
        self.jobs.remove_process(process.pid)
        view = self.board.read(process.slot)
        self.board.release(process.slot)
        self.manager.account_exit(self.job, process, view, status, now)


def test_an_early_exit_without_a_result_backs_off_exponentially_up_to_the_cap() -> None:
    rig = Rig()
    delays = []
    for attempt in range(9):
        now = 100.0 * (attempt + 1)
        rig.exit(rig.process(now), EXITED_1, now + 0.5)
        delays.append(rig.job.next_start_at - (now + 0.5))
    assert delays == [1, 2, 4, 8, 16, 32, BACKOFF_CAP, BACKOFF_CAP, BACKOFF_CAP]
    assert rig.job.failed_starts == 9 == rig.job.failed_starts_total
    assert not rig.manager.can_start(rig.job, rig.job.next_start_at - 0.01)
    assert rig.manager.can_start(rig.job, rig.job.next_start_at)


def test_a_death_holding_a_job_is_a_failed_start_at_any_age_counted_per_handle() -> None:
    rig = Rig()
    rig.exit(rig.process(0.0, delivered=5, busy=True, handle=b"H:poison"), KILLED, 1000.0)
    assert rig.job.failed_starts == 1
    assert rig.job.next_start_at == 1000.0 + POISON_BACKOFF_BASE
    assert "holding job H:poison" in rig.job.last_error_msg
    rig.manager.note_working(rig.job, rig.board.read(rig.process(1000.0, delivered=1).slot))
    assert rig.job.failed_starts == 0  # a healthy sibling delivered ...
    rig.exit(rig.process(1001.0, busy=True, handle=b"H:poison"), KILLED, 1002.0)
    # ... but the same poison handle still counts its second death
    assert rig.job.next_start_at == 1002.0 + 2 * POISON_BACKOFF_BASE


def test_a_process_that_worked_and_died_idle_is_replaced_at_once() -> None:
    rig = Rig()
    rig.job.failed_starts, rig.job.next_start_at = 2, 50.0
    rig.exit(rig.process(0.0, delivered=3), KILLED, FAILED_START_WINDOW + 1)
    assert (rig.job.failed_starts, rig.job.next_start_at) == (0, 0.0)
    assert rig.job.recycled_total == {"died": 1}


def test_a_late_exit_without_a_result_is_not_a_failed_start() -> None:
    rig = Rig()
    rig.exit(rig.process(0.0), EXITED_1, FAILED_START_WINDOW + 0.1)
    assert rig.job.failed_starts == 0


def test_exits_the_master_asked_for_count_by_their_cause() -> None:
    rig = Rig()
    for cause in ("reload", "console kill", "idle"):
        process = rig.process(0.0)
        rig.manager.stop(process, cause, now=1.0)
        rig.exit(process, EXITED_0, 2.0)
    assert rig.job.recycled_total == {"reload": 1, "console": 1}  # idle is no recycling
    assert rig.job.failed_starts == 0


def test_a_graceful_stop_is_a_sigterm_then_a_sigkill_past_graceful_timeout() -> None:
    rig = Rig(graceful=30.0)
    process = rig.process(0.0)
    rig.manager.stop(process, "idle", now=100.0)
    rig.manager.stop(process, "idle", now=101.0)  # asked once only
    assert rig.signals == [(process.pid, signal.SIGTERM)]
    rig.manager.enforce_deadlines(129.9)
    assert len(rig.signals) == 1
    rig.manager.enforce_deadlines(130.0)
    assert rig.signals[-1] == (process.pid, signal.SIGKILL)
    assert process.stop_reason == "still running 30s after idle" and process.cause == "idle"


def test_a_job_over_its_timeout_is_killed_and_counted() -> None:
    rig = Rig(timeout=5.0)
    process = rig.process(0.0, busy=True)
    started = rig.board.read(process.slot).job_started
    rig.wall[0] = started + 4.9
    rig.manager.enforce_deadlines(1.0)
    assert rig.signals == []
    rig.wall[0] = started + 5.1
    rig.manager.enforce_deadlines(2.0)
    assert rig.signals == [(process.pid, signal.SIGKILL)]
    assert rig.job.timeouts_total == 1 and process.cause == "job timeout"


def test_a_reload_forgets_the_failures_of_a_job() -> None:
    rig = Rig()
    rig.exit(rig.process(0.0), EXITED_1, 0.5)
    rig.manager.forget_failures(rig.job)
    assert (rig.job.failed_starts, rig.job.next_start_at) == (0, 0.0)
    assert rig.job.failed_starts_total == 1  # the metric keeps counting


def deliver(rig: Rig, process: Process) -> None:
    """`process` sends one more result (stamped with the real monotonic clock, as children do)."""
    writer = rig.board.child_writer(process.slot)
    writer.job_started(b"H:ok")
    writer.job_finished(None)
    writer.result_sent(True)


def kill_holding(rig: Rig, process: Process, handle: bytes) -> float:
    """SIGKILL `process` while it holds `handle`; the delay before the job's next start."""
    rig.board.child_writer(process.slot).job_started(handle)
    now = time.monotonic()
    rig.exit(process, KILLED, now)
    return round(rig.job.next_start_at - now, 6)


def test_kills_amid_healthy_siblings_cost_one_short_wait_each_not_a_ramp() -> None:
    rig = Rig()
    pool = [rig.process(0.0, delivered=1) for _ in range(4)]
    delays = []
    for n in range(10):
        for process in pool:
            deliver(rig, process)  # the siblings keep working between two kills
        victim = pool.pop(0)
        delays.append(kill_holding(rig, victim, f"H:{n}".encode()))
        pool.append(rig.process(0.0))  # its replacement
    assert delays == [POISON_BACKOFF_BASE] * 10


def test_the_same_handle_dying_again_ramps_while_siblings_deliver() -> None:
    rig = Rig()
    pool = [rig.process(0.0, delivered=1) for _ in range(4)]
    delays = []
    for _ in range(6):
        for process in pool:
            deliver(rig, process)
        delays.append(kill_holding(rig, pool.pop(0), b"H:poison"))
        pool.append(rig.process(0.0))
    assert delays == [POISON_BACKOFF_BASE * 2 ** k for k in range(6)]


def test_deaths_with_no_result_delivered_in_between_ramp() -> None:
    rig = Rig()
    pool = [rig.process(0.0, delivered=1) for _ in range(4)]  # results from before the streak
    delays = [kill_holding(rig, pool.pop(0), f"H:{n}".encode()) for n in range(4)]
    assert delays == [POISON_BACKOFF_BASE * 2 ** k for k in range(4)]


def test_the_loop_is_told_when_a_backed_off_start_is_due() -> None:
    rig = Rig()
    assert rig.manager.next_start_due(100.0) is None
    rig.exit(rig.process(99.0), EXITED_1, 100.0)  # a failed start: next one in 1 s
    assert rig.manager.next_start_due(100.0) == 101.0
    assert rig.manager.next_start_due(101.0) is None  # due now: nothing left to wait for


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """gc.freeze() in a batch would keep this test process's objects for good: undo it."""
    yield
    gc.unfreeze()


def free_slots(board: Scoreboard) -> int:
    """How many slots can still be allocated (allocates them all: call it last)."""
    count = 0
    while True:
        try:
            board.allocate()
        except IndexError:
            return count
        count += 1


class FakeFork:
    """Stands in for os.fork in the master: returns pids (or raises) and notes how many
    processes the table held at each fork."""

    def __init__(self, rig: Rig, fail_after: int | None = None) -> None:
        self.rig, self.fail_after = rig, fail_after
        self.recorded_at_fork: list[int] = []

    def __call__(self) -> int:
        if self.fail_after is not None and len(self.recorded_at_fork) == self.fail_after:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        self.recorded_at_fork.append(len(self.rig.job.processes))
        return 1000 + len(self.recorded_at_fork)


def test_a_batch_forks_every_process_before_recording_any(
        monkeypatch: pytest.MonkeyPatch, unfrozen: None) -> None:
    rig = Rig()
    fork = FakeFork(rig)
    monkeypatch.setattr(processes_module.os, "fork", fork)
    pids = rig.manager.start_batch([StartRequest(rig.job, 3, "min_processes")])
    assert pids == [1001, 1002, 1003]
    assert fork.recorded_at_fork == [0, 0, 0]  # nothing written between the forks
    assert sorted(rig.job.processes) == pids
    assert rig.job.starts_total == 3
    assert {rig.board.read(p.slot).state for p in rig.job.processes.values()} == {
        State.STARTING}


def test_a_fork_failing_mid_batch_keeps_the_forked_frees_the_rest_and_backs_off(
        monkeypatch: pytest.MonkeyPatch, unfrozen: None) -> None:
    rig = Rig()
    monkeypatch.setattr(processes_module.os, "fork", FakeFork(rig, fail_after=2))
    assert rig.manager.start_batch([StartRequest(rig.job, 4, "min_processes")]) == [1001, 1002]
    assert len(rig.job.processes) == 2
    assert free_slots(rig.board) == rig.board.size - 2  # the two never forked gave theirs back
    assert rig.manager.start_failures == 1
    assert not rig.manager.can_start(rig.job, time.monotonic())  # every start held back


def test_a_batch_past_the_scoreboard_stops_at_its_last_slot(
        monkeypatch: pytest.MonkeyPatch, unfrozen: None) -> None:
    rig = Rig()
    monkeypatch.setattr(processes_module.os, "fork", FakeFork(rig))
    pids = rig.manager.start_batch([StartRequest(rig.job, rig.board.size + 2, "scale up")])
    assert len(pids) == rig.board.size
    assert rig.manager.start_failures == 1


def test_what_a_batch_prepares_is_frozen_before_its_first_fork(
        monkeypatch: pytest.MonkeyPatch, unfrozen: None) -> None:
    """Left young, the batch's slot writers would be walked (and their pages copied) by each
    child's first collection."""
    rig = Rig()
    young_writers: list[int] = []

    def fork() -> int:
        young_writers.append(sum(isinstance(o, SlotWriter) for o in gc.get_objects(0)))
        return 1000 + len(young_writers)

    monkeypatch.setattr(processes_module.os, "fork", fork)
    rig.manager.start_batch([StartRequest(rig.job, 3, "min_processes")])
    assert young_writers == [0, 0, 0]


def test_reconnects_are_summed_per_server_and_kept_once_a_process_exited() -> None:
    rig = Rig()
    one, two = ("198.18.1.2", 4730), ("198.18.2.2", 4730)
    live = rig.process()
    live.servers = (one, two)
    writer = rig.board.child_writer(live.slot)
    for index in (1, 1, 0):
        writer.reconnected(index)
    slot = rig.board.allocate()
    pid = os.fork()
    if pid == 0:
        child = rig.board.child_writer(slot)
        for _ in range(3):
            child.reconnected(0)  # its only server is `two`
        child.ready(os.getpid())
        os._exit(0)
    rig.jobs.add_process(rig.job, Process(pid, slot, "resize", 0.0, servers=(two,)))
    deadline = time.monotonic() + 10
    while rig.board.read(slot).pid != pid:  # written
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert rig.manager.reconnects() == {one: 1, two: 5}
    while rig.jobs.job_of(pid) is not None:
        assert time.monotonic() < deadline
        rig.manager.reap(time.monotonic())
        time.sleep(0.01)
    assert rig.manager.reconnects() == {one: 1, two: 5}  # the exited one's count is kept
    assert rig.board.read(slot).state == State.FREE
