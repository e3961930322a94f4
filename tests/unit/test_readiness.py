"""When READY=1 goes to systemd: decided from the job table, the scoreboard and the last
snapshot, without a process or a server."""

from __future__ import annotations

from dataclasses import replace

from gearman_driver.jobs.table import JobSpec, JobTable, MethodSpec, Process
from gearman_driver.master.observer import Snapshot
from gearman_driver.master.readiness import UNREGISTERED_GRACE, Readiness
from gearman_driver.scoreboard import SlotView, State

SERVER = ("127.0.0.1", 4730)


def view(state: State = State.IDLE, registered: int = 1) -> SlotView:
    return SlotView(1, state, registered, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, "")


class Board:
    def __init__(self) -> None:
        self.views: dict[int, SlotView] = {}

    def read(self, slot: int) -> SlotView:
        return self.views[slot]


def table(min_processes: int = 2) -> JobTable:
    jobs = JobTable()
    jobs.add(JobSpec("resize", object(), "t.Images",  # type: ignore[arg-type]
                     (MethodSpec("resize", lambda job, data: data),), min_processes, 4))
    return jobs


def add(jobs: JobTable, board: Board, count: int, slot_view: SlotView) -> None:
    job = jobs["resize"]
    for _ in range(count):
        pid = 100 + len(job.processes)
        jobs.add_process(job, Process(pid, pid, "resize", 0.0))
        board.views[pid] = slot_view


def snap(down: bool) -> Snapshot:
    return Snapshot(1.0, () if down else (SERVER,), (SERVER,) if down else (), {}, ())


def test_not_ready_until_min_processes_run_and_are_registered() -> None:
    jobs, board, readiness = table(), Board(), Readiness()
    assert not readiness.ready(jobs, board, None, 0.0)
    add(jobs, board, 1, view())
    assert not readiness.ready(jobs, board, None, 0.1)
    add(jobs, board, 1, view(State.STARTING, 0))
    assert not readiness.ready(jobs, board, None, 0.2)
    board.views[101] = view()
    assert readiness.ready(jobs, board, None, 0.3)


def test_a_job_that_fails_to_start_does_not_hold_ready() -> None:
    jobs, board, readiness = table(), Board(), Readiness()
    jobs["resize"].failed_starts = 1
    assert readiness.ready(jobs, board, None, 0.0)


def test_unregistered_processes_hold_ready_for_the_grace_only() -> None:
    jobs, board, readiness = table(1), Board(), Readiness()
    add(jobs, board, 1, view(registered=0))
    assert not readiness.ready(jobs, board, snap(down=False), 10.0)
    assert not readiness.ready(jobs, board, snap(down=False), 10.0 + UNREGISTERED_GRACE - 0.1)
    assert readiness.ready(jobs, board, snap(down=False), 10.0 + UNREGISTERED_GRACE)


def test_gearmand_down_does_not_hold_ready() -> None:
    jobs, board, readiness = table(1), Board(), Readiness()
    add(jobs, board, 1, replace(view(), registered=0))
    assert readiness.ready(jobs, board, snap(down=True), 10.0)


def test_no_job_with_min_processes_is_ready_at_once() -> None:
    assert Readiness().ready(table(0), Board(), None, 0.0)
