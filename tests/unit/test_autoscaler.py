"""The autoscaler's decisions over time, without a process or a server: a fake clock, a fake
process manager, a fake scoreboard and scripted gearmand snapshots."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gearman_driver.config.settings import Settings, load_settings
from gearman_driver.jobs.table import Job, JobSpec, JobTable, MethodSpec, Process
from gearman_driver.master.autoscaler import Autoscaler
from gearman_driver.master.observer import FunctionStatus, Snapshot, WorkerEntry
from gearman_driver.master.processes import ProcessManager, StartRequest
from gearman_driver.scoreboard import SlotView, State

SERVER = ("127.0.0.1", 4730)


def idle_view(pid: int, started: float, *, delivered: int = 0, state: State = State.IDLE,
              last_job_end: float = 0.0) -> SlotView:
    return SlotView(pid, state, 1, delivered, delivered, started, 0.0, last_job_end, 0.0, 0.0,
                    "")


class FakeScoreboard:
    def __init__(self) -> None:
        self.views: dict[int, SlotView] = {}

    def read(self, slot: int) -> SlotView:
        return self.views[slot]

    def busy(self, slot: int) -> bool:
        return self.views[slot].busy

    def full(self, slot: int) -> bool:
        view = self.views[slot]
        return view.busy_slots >= view.slots if view.slots > 1 else view.busy


@dataclass
class FakeProcesses:
    """Forks nothing: a start adds a Process to the table and an idle slot to the scoreboard."""

    jobs: JobTable
    scoreboard: FakeScoreboard
    wall: Callable[[], float]
    started: list[tuple[str, str]] = field(default_factory=list)
    stopped: list[tuple[int, str]] = field(default_factory=list)
    refuse: bool = False
    next_pid: int = 100

    def can_start(self, job: Job, now: float) -> bool:
        return now >= job.next_start_at

    def start_batch(self, requests: Sequence[StartRequest]) -> list[int]:
        pids: list[int] = []
        if self.refuse:  # as the real one: the first start that cannot happen ends the batch
            return pids
        for job, count, reason in requests:
            for _ in range(count):
                self.next_pid += 1
                pid = slot = self.next_pid
                self.scoreboard.views[slot] = idle_view(pid, self.wall())
                self.jobs.add_process(job, Process(pid, slot, job.name, 0.0))
                self.started.append((job.name, reason))
                pids.append(pid)
        return pids

    def stop(self, process: Process, reason: str, now: float | None = None) -> None:
        process.stopping = True
        self.stopped.append((process.pid, reason))

    note_working = staticmethod(ProcessManager.note_working)


class ScriptedObserver:
    """Stands in for the gearmand observer: the test hands it each snapshot."""

    made: list[ScriptedObserver] = []

    def __init__(self, servers: Any, selector: Any, *, timeout: float, keepalive: float,
                 on_snapshot: Callable[[Snapshot], None]) -> None:
        self.servers, self.timeout, self.on_snapshot = servers, timeout, on_snapshot
        self.keepalive = keepalive
        self.snapshot: Snapshot | None = None
        self.polls: list[float] = []
        self.closed = False
        ScriptedObserver.made.append(self)

    def answer(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.on_snapshot(snapshot)

    def start_poll(self, now: float) -> bool:
        self.polls.append(now)
        return True

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def close_in_child(self) -> None:
        pass


def snapshot(taken_at: float, queued: dict[str, int], *, running: int = 0,
             workers: tuple[WorkerEntry, ...] = ()) -> Snapshot:
    functions = {name: FunctionStatus(name, total, running, 1) for name, total in
                 queued.items()}
    return Snapshot(taken_at, (SERVER,), (), functions, workers)


@dataclass
class Rig:
    autoscaler: Autoscaler
    jobs: JobTable
    processes: FakeProcesses
    scoreboard: FakeScoreboard
    observer: ScriptedObserver | None
    clock: list[float]
    unknown: list[dict[str, Any]]

    def job(self, name: str = "resize") -> Job:
        return self.jobs[name]

    def busy(self, name: str = "resize") -> None:
        for process in self.job(name).processes.values():
            view = self.scoreboard.views[process.slot]
            self.scoreboard.views[process.slot] = replace(view, state=State.BUSY)


def rig(min_processes: int = 1, max_processes: int = 4, *, settings: Settings | None = None,
        callback: bool = False) -> Rig:
    settings = settings or load_settings([], {"interval": 1, "max_idle_time": 10})
    jobs = JobTable()
    jobs.add(JobSpec("resize", object(), "t.Images",  # type: ignore[arg-type]
                     (MethodSpec("resize", lambda job, data: data),),
                     min_processes, max_processes))
    clock = [1000.0]
    scoreboard = FakeScoreboard()
    processes = FakeProcesses(jobs, scoreboard, lambda: clock[0])
    unknown: list[dict[str, Any]] = []
    ScriptedObserver.made.clear()
    autoscaler = Autoscaler(jobs, scoreboard, processes, None, settings, driver_id="h:1",
                            on_unknown=unknown.append if callback else None,
                            observer=ScriptedObserver, wall=lambda: clock[0])
    observer = ScriptedObserver.made[-1] if ScriptedObserver.made else None
    return Rig(autoscaler, jobs, processes, scoreboard, observer, clock, unknown)


def test_min_processes_start_before_any_snapshot() -> None:
    r = rig(min_processes=2)
    r.autoscaler.manage(0.0)
    assert r.processes.started == [("resize", "min_processes")] * 2
    r.autoscaler.manage(0.2)  # the next turn: nothing new to decide on
    assert len(r.processes.started) == 2


def test_a_snapshot_is_acted_on_once_per_job() -> None:
    r = rig(min_processes=1, max_processes=4)
    r.autoscaler.manage(0.0)
    r.busy()
    r.observer.answer(snapshot(1.0, {"resize": 3}))
    r.autoscaler.manage(1.0)
    assert [reason for _, reason in r.processes.started] == ["min_processes"] + ["scale up"] * 3
    r.busy()
    r.autoscaler.manage(1.2)  # the same snapshot again: no second scale-up
    assert len(r.processes.started) == 4


def test_no_scale_up_while_a_process_is_free() -> None:
    r = rig(min_processes=1, max_processes=4)
    r.autoscaler.manage(0.0)
    r.observer.answer(snapshot(1.0, {"resize": 5}))
    r.autoscaler.manage(1.0)
    assert len(r.processes.started) == 1  # the idle one will take the queued jobs


def test_the_shortfall_is_shared_with_peer_drivers() -> None:
    r = rig(min_processes=1, max_processes=8)
    r.autoscaler.manage(0.0)
    r.busy()
    peer = WorkerEntry(SERVER, 9, "10.0.0.2", "other:55:2:resize", ("resize",))
    r.observer.answer(snapshot(1.0, {"resize": 6}, workers=(peer,)))
    r.autoscaler.manage(1.0)
    assert len(r.processes.started) == 1 + 3  # 6 waiting, 2 drivers


def test_idle_processes_stop_only_after_max_idle_time() -> None:
    r = rig(min_processes=1, max_processes=4)
    r.autoscaler.manage(0.0)
    r.busy()
    r.observer.answer(snapshot(1.0, {"resize": 3}))
    r.autoscaler.manage(1.0)
    for slot, view in r.scoreboard.views.items():  # all done, idle since now
        r.scoreboard.views[slot] = replace(view, state=State.IDLE, last_job_end=r.clock[0])
    r.clock[0] += 5  # idle 5 s of max_idle_time 10
    r.observer.answer(snapshot(2.0, {"resize": 0}))
    r.autoscaler.manage(2.0)
    assert r.processes.stopped == []
    r.clock[0] += 6
    r.observer.answer(snapshot(3.0, {"resize": 0}))
    r.autoscaler.manage(3.0)
    assert [reason for _, reason in r.processes.stopped] == ["idle"] * 3
    assert len(r.job().running()) == 1  # down to min_processes


def test_lowered_max_stops_idle_processes_without_a_snapshot() -> None:
    r = rig(min_processes=3, max_processes=3)
    r.autoscaler.manage(0.0)
    r.job().max_processes = r.job().min_processes = 1  # as the console's set_processes does
    r.autoscaler.manage(0.2)
    assert [reason for _, reason in r.processes.stopped] == ["max_processes"] * 2


def test_after_a_failed_start_one_process_at_a_time_probes() -> None:
    r = rig(min_processes=3, max_processes=3)
    r.job().failed_starts = 2
    r.autoscaler.manage(0.0)
    assert len(r.processes.started) == 1
    r.job().next_start_at = 5.0  # backing off
    r.autoscaler.manage(1.0)
    assert len(r.processes.started) == 1
    r.autoscaler.manage(5.0)
    assert len(r.processes.started) == 2


def test_a_process_that_delivered_clears_the_failed_starts() -> None:
    r = rig(min_processes=1, max_processes=2)
    r.autoscaler.manage(0.0)
    r.job().failed_starts = 3
    (process,) = r.job().processes.values()
    r.scoreboard.views[process.slot] = replace(r.scoreboard.views[process.slot], delivered=1)
    r.observer.answer(snapshot(1.0, {"resize": 0}))
    r.autoscaler.manage(1.0)
    assert r.job().failed_starts == 0


def test_a_start_that_cannot_happen_stops_trying_for_this_turn() -> None:
    r = rig(min_processes=3, max_processes=3)
    r.processes.refuse = True
    r.autoscaler.manage(0.0)
    assert r.processes.started == []
    r.processes.refuse = False
    r.autoscaler.manage(0.2)
    assert len(r.processes.started) == 3


def test_saturation_polls_at_once_but_not_more_often_than_the_gap() -> None:
    r = rig(min_processes=1, max_processes=4)
    r.autoscaler.tick(100.0, polling=True)
    assert r.observer.polls == [100.0]
    r.autoscaler.manage(100.0)
    r.busy()
    r.autoscaler.manage(100.01)  # every process busy, room for more: ask gearmand now
    r.autoscaler.manage(100.02)  # ... but not again within SATURATION_POLL_GAP
    r.autoscaler.manage(100.1)
    assert r.observer.polls == [100.0, 100.01, 100.1]


def test_polls_follow_the_interval_and_stop_while_draining() -> None:
    r = rig()
    for now in (0.0, 0.5, 1.0, 1.5, 2.0):
        r.autoscaler.tick(now, polling=True)
    assert r.observer.polls == [0.0, 1.0, 2.0]
    r.autoscaler.tick(3.0, polling=False)
    assert r.observer.polls == [0.0, 1.0, 2.0]


def test_interval_zero_turns_scaling_off_and_a_reload_turns_it_on() -> None:
    r = rig(settings=load_settings([], {"interval": 0, "server": "a:1,[::1]:2"}))
    assert r.autoscaler.observer is None and r.observer is None
    assert [(seen.label, seen.state) for seen in r.autoscaler.servers_seen()] == [
        ("a:1", "unknown"), ("[::1]:2", "unknown")]  # nothing polls them
    r.autoscaler.configure(load_settings([], {"interval": 2}))
    assert r.autoscaler.observer is not None and r.autoscaler.observer.timeout == 4.0


def test_a_reload_keeps_the_observer_unless_servers_or_interval_change() -> None:
    r = rig()
    r.autoscaler.configure(load_settings([], {"interval": 1, "max_idle_time": 99,
                                              "keepalive": 7}))
    assert r.autoscaler.observer is r.observer and not r.observer.closed
    assert r.autoscaler.settings.max_idle_time == 99
    assert r.observer.keepalive == 7  # its next polls' connections
    r.autoscaler.configure(load_settings([], {"interval": 1, "server": "other:4730"}))
    assert r.observer.closed and r.autoscaler.observer is not r.observer


def test_queued_functions_nobody_serves_go_to_the_callback() -> None:
    r = rig(callback=True)
    r.observer.answer(snapshot(1.0, {"resize": 2, "stranger": 3, "empty": 0}))
    assert r.unknown == [{"name": "stranger", "queue": 3, "busy": 0, "free": 1, "running": 1}]


def test_without_a_callback_an_unknown_function_is_warned_about_once(caplog) -> None:
    r = rig()
    r.observer.answer(snapshot(1.0, {"stranger": 3}))
    r.observer.answer(snapshot(2.0, {"stranger": 4}))
    warnings = [rec for rec in caplog.records if "no job of ours serves" in rec.getMessage()]
    assert len(warnings) == 1
