"""The metrics collector: scoreboard counters, folded totals and the snapshot, as exposed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from types import MappingProxyType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gearman_driver.api import Worker
from gearman_driver.jobs.options import JobOptions
from gearman_driver.jobs.table import Job, JobSpec, JobTable, MethodSpec, Process
from gearman_driver.master.looplag import LoopLag
from gearman_driver.master.metrics import (
    DriverCollector,
    MetricsSource,
    ProcessMemory,
    exposition,
    make_registry,
)
from gearman_driver.master.observer import FunctionStatus, ServerSeen, Snapshot
from gearman_driver.master.processes import ProcessManager
from gearman_driver.protocol import DEFAULT_MAX_PACKET
from gearman_driver.scoreboard import (
    DURATION_BUCKETS,
    MAX_FUNCTIONS,
    Counters,
    Scoreboard,
    function_slot,
)
from tests.gearmand_util import wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def no_limits(job: Job) -> JobOptions:
    return JobOptions("native", 0, 0, 0.0, DEFAULT_MAX_PACKET, None)


def body(job: object, workload: bytes) -> bytes:
    return workload


def spec(name: str, functions: list[str], low: int = 1, high: int = 4) -> JobSpec:
    return JobSpec(name, Worker(server="s"), "tests.W", tuple(MethodSpec(f, body)
                                                             for f in functions), low, high)


def render(source: MetricsSource, accept: str = "") -> tuple[bytes, str]:
    collector = DriverCollector(source)
    try:
        return exposition(make_registry(collector), accept)
    finally:
        collector.close()


def scrape(source: MetricsSource, accept: str = "") -> Samples:
    text, content_type = render(source, accept)
    assert content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def source_for(jobs: JobTable, board: Scoreboard, snapshot: Snapshot | None = None,
               reloads: dict[str, int] | None = None, servers: list[ServerSeen] | None = None,
               reconnects: dict[tuple[str, int], int] | None = None) -> MetricsSource:
    return MetricsSource(jobs=jobs, scoreboard=lambda: board, snapshot=lambda: snapshot,
                         backend=lambda: "native", reloads=reloads or {},
                         loop_lag=lambda: 0.25, servers=lambda: servers or [],
                         reconnects=lambda: reconnects or {})


def run_jobs(board: Scoreboard, slot: int, jobs: list[tuple[int, str | None, float]]) -> None:
    """As a child does: (function index, error, seconds it took) per job."""
    writer = board.child_writer(slot)
    writer.ready(os.getpid())
    for function, error, seconds in jobs:
        writer.job_started(b"H:1")
        writer._job_started -= seconds  # as if the job had begun `seconds` ago
        writer.job_finished(error, function_slot(function))
        writer.result_sent(True)


def job_table(*specs: JobSpec) -> JobTable:
    table = JobTable()
    for one in specs:
        table.add(one)
    return table


def test_live_slots_and_folded_totals_add_up_per_function_and_result() -> None:
    board = Scoreboard(8)
    jobs = job_table(spec("group", ["f.a", "f.b"]), spec("solo", ["s.one"], 0, 2))
    group = jobs["group"]
    first, second = board.allocate(), board.allocate()
    jobs.add_process(group, Process(101, first, "group", 0.0))
    jobs.add_process(group, Process(102, second, "group", 0.0))
    run_jobs(board, first, [(0, None, 0.001), (0, "ValueError: x", 0.02), (1, None, 7.0)])
    run_jobs(board, second, [(1, None, 0.3)])
    folded = Counters.zero()  # of processes gone: 1.5 s, one job of a second, 3 + 1 results
    buckets = len(folded.buckets)
    folded.values[0] = 1.5
    folded.values[1 + DURATION_BUCKETS.index(1.0)] = 1
    folded.values[1 + buckets:1 + buckets + 4] = [3, 0, 0, 1]
    group.counters.add(folded.values)
    board.child_writer(second).job_started(b"H:2")  # busy now

    samples = scrape(source_for(jobs, board))
    done = "gearman_driver_jobs_total"
    assert samples[(done, (("function", "f.a"), ("job_name", "group"), ("result", "complete")))] \
        == 1 + 3
    assert samples[(done, (("function", "f.a"), ("job_name", "group"), ("result", "failed")))] \
        == 1
    assert samples[(done, (("function", "f.b"), ("job_name", "group"), ("result", "complete")))] \
        == 2
    assert samples[(done, (("function", "f.b"), ("job_name", "group"), ("result", "failed")))] \
        == 1
    assert samples[(done, (("function", "s.one"), ("job_name", "solo"), ("result", "complete")))] \
        == 0
    hist = "gearman_driver_job_duration_seconds"
    group_label = (("job_name", "group"),)
    assert samples[(hist + "_count", group_label)] == 5
    assert samples[(hist + "_sum", group_label)] == pytest.approx(1.5 + 7.321, abs=0.01)
    assert samples[(hist + "_bucket", (("job_name", "group"), ("le", "0.005")))] == 1
    assert samples[(hist + "_bucket", (("job_name", "group"), ("le", "0.025")))] == 2
    assert samples[(hist + "_bucket", (("job_name", "group"), ("le", "0.5")))] == 3
    assert samples[(hist + "_bucket", (("job_name", "group"), ("le", "1")))] == 4
    assert samples[(hist + "_bucket", (("job_name", "group"), ("le", "10")))] == 5
    assert samples[(hist + "_bucket", (("job_name", "group"), ("le", "+Inf")))] == 5
    assert samples[("gearman_driver_processes", group_label)] == 2
    assert samples[("gearman_driver_processes_busy", group_label)] == 1
    assert samples[("gearman_driver_processes", (("job_name", "solo"),))] == 0
    assert samples[("gearman_driver_min_processes", (("job_name", "solo"),))] == 0
    assert samples[("gearman_driver_max_processes", (("job_name", "solo"),))] == 2


def test_duration_buckets_are_the_ones_the_readme_lists() -> None:
    samples = scrape(source_for(job_table(spec("solo", ["s.one"])), Scoreboard(1)))
    bounds = [dict(labels)["le"] for name, labels in samples
              if name == "gearman_driver_job_duration_seconds_bucket"]
    assert bounds == ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "10",
                      "60", "300", "+Inf"]


def test_gearmand_snapshot_master_counters_and_build_info() -> None:
    board = Scoreboard(2)
    jobs = job_table(spec("solo", ["s.one"]))
    solo = jobs["solo"]
    solo.starts_total, solo.failed_starts_total, solo.timeouts_total = 7, 2, 1
    solo.recycled_total.update({"max_jobs": 3, "died": 1})
    snapshot = Snapshot(
        taken_at=time.monotonic() - 3.0, servers_up=(("127.0.0.1", 4730),),
        servers_down=(("::1", 4731),),
        functions=MappingProxyType({"s.one": FunctionStatus("s.one", 10, 4, 4)}), workers=(),
    )
    servers = [ServerSeen(("127.0.0.1", 4730), "up", 3), ServerSeen(("::1", 4731), "down", 0),
               ServerSeen(("10.9.9.9", 4730), "unknown", 0)]
    samples = scrape(source_for(jobs, board, snapshot, {"ok": 2, "failed": 1}, servers,
                                {("::1", 4731): 4, ("10.1.1.1", 4730): 1}))
    label = (("job_name", "solo"),)
    assert samples[("gearman_driver_gearmand_jobs_waiting", (("function", "s.one"),))] == 6
    local, v6, unpolled, removed = ((("server", name),) for name in (
        "127.0.0.1:4730", "[::1]:4731", "10.9.9.9:4730", "10.1.1.1:4730"))
    assert samples[("gearman_driver_gearmand_up", local)] == 1
    assert samples[("gearman_driver_gearmand_up", v6)] == 0
    assert ("gearman_driver_gearmand_up", unpolled) not in samples  # not polled yet
    assert samples[("gearman_driver_gearmand_workers_connected", local)] == 3
    assert ("gearman_driver_gearmand_workers_connected", v6) not in samples  # unknown: down
    reconnects = "gearman_driver_gearmand_reconnects_total"
    assert samples[(reconnects, local)] == 0  # every configured server, from zero
    assert samples[(reconnects, v6)] == 4
    assert samples[(reconnects, unpolled)] == 0
    assert samples[(reconnects, removed)] == 1  # a server no longer configured keeps its count
    assert 3.0 <= samples[("gearman_driver_gearmand_scrape_age_seconds", ())] < 60
    assert samples[("gearman_driver_process_starts_total", label)] == 7
    assert samples[("gearman_driver_failed_starts_total", label)] == 2
    assert samples[("gearman_driver_job_timeouts_total", label)] == 1
    recycled = "gearman_driver_recycled_total"
    assert samples[(recycled, (("job_name", "solo"), ("reason", "max_jobs")))] == 3
    assert samples[(recycled, (("job_name", "solo"), ("reason", "died")))] == 1
    assert samples[(recycled, (("job_name", "solo"), ("reason", "reload")))] == 0
    assert samples[("gearman_driver_reloads_total", (("result", "ok"),))] == 2
    assert samples[("gearman_driver_reloads_total", (("result", "failed"),))] == 1
    assert samples[("gearman_driver_loop_lag_seconds", ())] == 0.25
    build = [key for key in samples if key[0] == "gearman_driver_build_info"]
    assert len(build) == 1 and ("backend", "native") in build[0][1]
    assert samples[("gearman_driver_memory_rss_bytes", ())] > 1_000_000
    assert samples[("process_resident_memory_bytes", ())] > 1_000_000  # the master's own


def test_no_snapshot_yet_means_no_gearmand_samples() -> None:
    samples = scrape(source_for(job_table(), Scoreboard(1)))
    assert not [key for key in samples if key[0].startswith("gearman_driver_gearmand_")]


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    source = source_for(job_table(spec("solo", ["s.one"])), Scoreboard(1))
    text, content_type = render(source,
                                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith(b"# EOF\n")
    assert b'gearman_driver_jobs_total{function="s.one",job_name="solo",result="complete"} 0' \
        in text


def test_a_group_with_more_functions_than_the_slot_holds_reports_the_rest_as_other() -> None:
    board = Scoreboard(2)
    names = [f"g.f{i}" for i in range(MAX_FUNCTIONS + 3)]
    jobs = job_table(spec("big", names))
    slot = board.allocate()
    jobs.add_process(jobs["big"], Process(5, slot, "big", 0.0))
    run_jobs(board, slot, [(MAX_FUNCTIONS + 1, None, 0.0), (0, None, 0.0)])
    samples = scrape(source_for(jobs, board))
    done = "gearman_driver_jobs_total"
    assert samples[(done, (("function", "_other"), ("job_name", "big"),
                           ("result", "complete")))] == 1
    assert samples[(done, (("function", "g.f0"), ("job_name", "big"), ("result", "complete")))] \
        == 1


def one_job_manager() -> tuple[Scoreboard, JobTable, ProcessManager]:
    """A ProcessManager over a job "solo"; the tests fork its processes themselves."""
    board = Scoreboard(2)
    jobs = job_table(spec("solo", ["s.one"]))
    manager = ProcessManager(jobs, board, servers=lambda: [], options=no_limits,
                             graceful_timeout=lambda: 5.0, close_inherited=lambda: None)
    return board, jobs, manager


def fork_worker(board: Scoreboard, slot: int, jobs: list[tuple[int, str | None, float]],
                then: Callable[[], object]) -> int:
    """A child that runs `jobs` in `slot`, then does `then` (it never returns into pytest)."""
    pid = os.fork()
    if pid == 0:
        try:
            run_jobs(board, slot, jobs)
            then()
        finally:
            os._exit(1)
    return pid


def test_a_reaped_process_keeps_its_counts_and_its_slot_starts_from_zero() -> None:
    board, jobs, manager = one_job_manager()
    solo = jobs["solo"]
    slot = board.allocate()
    pid = fork_worker(board, slot, [(0, None, 0.2), (0, "boom", 0.2)],
                      lambda: os.kill(os.getpid(), signal.SIGKILL))  # its slot is all that is left
    jobs.add_process(solo, Process(pid, slot, "solo", time.monotonic() - 60))
    assert wait_for(lambda: manager.reap(time.monotonic()) > 0)
    assert solo.counters.outcomes[:2] == [1, 1]
    assert sum(solo.counters.buckets) == 2
    assert solo.recycled_total == {"died": 1}
    assert Counters(list(board.counters(board.allocate()))) == Counters.zero()
    samples = scrape(source_for(jobs, board))
    assert samples[("gearman_driver_job_duration_seconds_count", (("job_name", "solo"),))] == 2


def test_a_process_that_recycled_itself_over_max_rss_mb_is_counted_so() -> None:
    board = Scoreboard(2)
    jobs = job_table(spec("solo", ["s.one"]))
    solo = jobs["solo"]
    manager = ProcessManager(jobs, board, servers=lambda: [], options=no_limits,
                             graceful_timeout=lambda: 1.0, close_inherited=lambda: None)
    slot = board.allocate()
    pid = os.fork()
    if pid == 0:
        run_jobs(board, slot, [(0, None, 0.01)])
        os._exit(0)  # as a child over its max_rss_mb exits
    jobs.add_process(solo, Process(pid, slot, "solo", time.monotonic() - 60, max_rss_mb=100))
    assert wait_for(lambda: manager.reap(time.monotonic()) > 0)
    assert solo.recycled_total == {"max_rss": 1}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fork_idle() -> int:
    pid = os.fork()
    if pid == 0:
        while True:
            signal.pause()
    return pid


def test_memory_is_read_from_each_process_on_descriptors_closed_once_it_is_gone() -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child with 64 MiB of its own, written so that it is resident
        ballast = b"x" * (64 << 20)
        os.write(write_fd, b"1")
        signal.pause()
        os._exit(len(ballast) and 0)
    os.close(write_fd)
    memory = ProcessMemory()
    before = open_fds()
    try:
        assert os.read(read_fd, 1) == b"1"
        assert memory.total([pid]) >= 64 << 20
        assert memory.total([pid]) >= 64 << 20  # the same descriptor, read again
        assert open_fds() == before + 1
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
    assert memory.total([pid]) == 0  # reaped between the job table and the read
    assert memory.total([]) == 0
    assert open_fds() == before - 1  # its descriptor and the pipe's are closed
    assert memory.total([os.getpid()]) > 0
    memory.close()
    assert open_fds() == before - 1


def test_memory_keeps_at_most_so_many_descriptors_and_reads_the_others_anyway() -> None:
    children = [fork_idle() for _ in range(3)]
    memory = ProcessMemory(keep=2)
    before = open_fds()
    try:
        assert memory.total(children) > 0
        assert open_fds() == before + 2
        alone = memory.total(children[2:])  # the third, read without keeping its file
        assert 0 < alone and open_fds() == before  # the other two are gone from the set
        assert memory.total(children) > alone
        assert open_fds() == before + 2
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        memory.close()
    assert open_fds() == before


def test_loop_lag_keeps_the_worst_turn_of_the_last_window() -> None:
    lag = LoopLag(period=0.2, window=10.0)
    lag.turn(100.0)
    lag.turn(100.1)  # early: an event woke the loop
    assert lag.value(100.1) == 0.0
    lag.turn(102.3)  # 2.2 s after the last turn: 2 s late
    lag.turn(102.5)
    assert lag.value(105.0) == pytest.approx(2.0)
    assert lag.value(115.0) == pytest.approx(2.0)  # still seen one window later
    assert lag.value(125.0) == 0.0


@pytest.mark.parametrize(("how", "reason"), [
    ("console kill", "console"), ("console killall", "console"), ("reload", "reload"),
    ("re-exec", "reload"), ("job timeout", "job_timeout"), ("max_jobs", "max_jobs"),
    ("idle", None), ("shutdown", None),
])
def test_recycled_processes_are_counted_by_reason(how: str, reason: str | None) -> None:
    board, jobs, manager = one_job_manager()
    solo = jobs["solo"]
    slot = board.allocate()
    # exits 0 as a child that ran max_jobs_per_process jobs, or waits to be stopped
    pid = fork_worker(board, slot, [(0, None, 0.0), (0, None, 0.0)],
                      (lambda: os._exit(0)) if how == "max_jobs" else signal.pause)
    process = Process(pid, slot, "solo", time.monotonic() - 60, max_jobs=2)
    jobs.add_process(solo, process)
    if how == "job timeout":
        manager.kill(process, how)
    elif how != "max_jobs":
        manager.stop(process, how)
    assert wait_for(lambda: manager.reap(time.monotonic()) > 0)
    assert solo.recycled_total == ({reason: 1} if reason else {})
