"""What the console's commands do to the master, through DriverControl, without a master:
the job table, a scoreboard, and a recorder for stops, shutdown and reload requests."""

from __future__ import annotations

from gearman_driver.console.control import DriverControl
from gearman_driver.jobs.table import JobSpec, JobTable, MethodSpec, Process
from gearman_driver.scoreboard import Scoreboard


def rig() -> tuple[DriverControl, JobTable, Scoreboard, list[tuple[int, str]], list[str]]:
    jobs = JobTable()
    for name in ("a.resize", "b.send"):
        jobs.add(JobSpec(name, object(), "t.W",  # type: ignore[arg-type]
                         (MethodSpec(name, lambda job, data: data),), 1, 4))
    board = Scoreboard(8)
    stops: list[tuple[int, str]] = []
    calls: list[str] = []
    control = DriverControl(jobs, board, stop=lambda p, why: stops.append((p.pid, why)),
                            shutdown=lambda: calls.append("shutdown"),
                            request_reload=lambda done: calls.append("reload"),
                            clock=lambda: 5000.0)
    for pid, name in ((11, "a.resize"), (12, "a.resize"), (21, "b.send")):
        slot = board.allocate()
        board.child_writer(slot).ready(pid)
        jobs.add_process(jobs[name], Process(pid, slot, name, 0.0))
    return control, jobs, board, stops, calls


def test_set_limits_changes_the_table_the_next_turn_applies() -> None:
    control, jobs, _, _, _ = rig()
    control.set_limits("a.resize", None, 9)
    control.set_limits("b.send", 0, None)
    assert (jobs["a.resize"].min_processes, jobs["a.resize"].max_processes) == (1, 9)
    assert (jobs["b.send"].min_processes, jobs["b.send"].max_processes) == (0, 4)
    rows = {row.name: row for row in control.job_rows()}
    assert (rows["a.resize"].max_processes, rows["a.resize"].processes) == (9, 2)


def test_kill_stops_only_our_processes() -> None:
    control, _, _, stops, _ = rig()
    assert control.stop_pids([12, 999]) == [12]
    assert stops == [(12, "console kill")]


def test_killall_stops_a_jobs_processes_or_every_one() -> None:
    control, _, _, stops, _ = rig()
    control.stop_jobs(["b.send"])
    assert stops == [(21, "console killall")]
    control.stop_jobs(["*"])
    assert sorted(pid for pid, _ in stops[1:]) == [11, 12, 21]


def test_process_rows_show_busy_and_idle_time() -> None:
    control, jobs, board, _, _ = rig()
    writer = board.child_writer(jobs["a.resize"].processes[12].slot)
    writer.job_started(b"H:1")
    rows = {row.pid: row for row in control.process_rows("a.resize")}
    assert rows[12].busy and rows[12].idle_for is None
    assert not rows[11].busy and rows[11].idle_for is None  # no job yet


def test_shutdown_and_reload_are_requests_to_the_master() -> None:
    control, _, _, _, calls = rig()
    control.request_reload(lambda error: None)
    control.request_shutdown()
    assert calls == ["reload", "shutdown"]
    assert control.has_job("a.resize") and not control.has_job("nope")


def test_servers_are_the_masters_rows() -> None:
    from gearman_driver.console.replies import ServerRow

    rows = [ServerRow("198.18.1.2:4730", "up", 2)]
    control = DriverControl(JobTable(), Scoreboard(1), stop=lambda p, why: None,
                            shutdown=lambda: None, request_reload=lambda done: None,
                            servers=lambda: rows)
    assert control.server_rows() == rows
