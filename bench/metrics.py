"""Cost of the Prometheus metrics: a scrape in the master, and the counting in each child.

Scrape: 50 jobs of 2 functions with 4 processes each (200 real, idle forked processes, so the
RSS read from /proc is real), counters filled as children fill them, a gearmand snapshot of
the 100 functions; the collector and prometheus_client's exposition are timed in-process, as
the master runs them on a GET /metrics, with the cyclic GC off as in the master; the first
scrape, which opens the 200 /proc/<pid>/statm files the later ones keep, is shown apart.
Recording: a child's job_started + job_finished pair on this scoreboard against the same pair
on the scoreboard before the metrics (commit PRE_METRICS, read from git), so the difference
is what counting a job costs per job.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

from bench.common import ROOT, Context, Figure, Headline, Section, fmt, progress
from gearman_driver.api import Worker
from gearman_driver.jobs.table import JobSpec, JobTable, MethodSpec, Process
from gearman_driver.master.metrics import DriverCollector, MetricsSource, exposition, make_registry
from gearman_driver.master.observer import FunctionStatus, Snapshot
from gearman_driver.scoreboard import Scoreboard

PRE_METRICS = "bc79626"  # the last commit whose scoreboard counted no durations
JOBS, PER_JOB = 50, 4
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def _body(job: object, workload: bytes) -> bytes:
    return workload


def _idle_children(count: int) -> list[int]:
    """Forked processes that only wait to be killed (the shape of idle workers)."""
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            while True:
                signal.pause()
        pids.append(pid)
    return pids


def _source(pids: list[int]) -> MetricsSource:
    board = Scoreboard(len(pids))
    jobs = JobTable()
    functions: dict[str, FunctionStatus] = {}
    worker = Worker(server="127.0.0.1")
    for j in range(JOBS):
        names = [f"bench.job{j}.a", f"bench.job{j}.b"]
        job = jobs.add(JobSpec(f"bench.job{j}", worker, "bench.W",
                               tuple(MethodSpec(n, _body) for n in names), 1, PER_JOB * 2))
        for name in names:
            functions[name] = FunctionStatus(name, 7, 2, PER_JOB)
        for p in range(PER_JOB):
            slot = board.allocate()
            writer = board.child_writer(slot)
            writer.ready(pids[j * PER_JOB + p])
            for k in range(40):  # every bucket and both results get counts
                writer.job_started(b"H:bench:1")
                writer._job_started -= 0.003 * 2 ** (k % 16)
                writer.job_finished("E" if k % 5 == 0 else None, k % 2)
            jobs.add_process(job, Process(pids[j * PER_JOB + p], slot, job.name, 0.0))
    snapshot = Snapshot(time.monotonic(), (("127.0.0.1", 4730),), (),
                        MappingProxyType(functions), ())
    return MetricsSource(jobs=jobs, scoreboard=lambda: board, snapshot=lambda: snapshot,
                         backend=lambda: "native", reloads={"ok": 1, "failed": 0},
                         loop_lag=lambda: 0.0)


def scrape_figures(scrapes: int) -> tuple[Figure, Figure, Figure, Figure, int]:
    text_ms = Figure("scrape, text format (wall)", "ms")
    open_ms = Figure("scrape, OpenMetrics (wall)", "ms")
    cpu_ms = Figure("scrape, text format (master CPU)", "ms")
    first_ms = Figure("first scrape: opens the statm files, makes the label sets (CPU)", "ms")
    pids = _idle_children(JOBS * PER_JOB)
    collector = DriverCollector(_source(pids))
    gc.disable()  # as in the master (gcpolicy), which collects once a minute, not in a scrape
    try:
        registry = make_registry(collector)
        c0 = time.process_time()
        size = len(exposition(registry, "")[0])
        first_ms.add(1e3 * (time.process_time() - c0))
        for _ in range(scrapes):
            t0, c0 = time.perf_counter(), time.process_time()
            exposition(registry, "")
            text_ms.add(1e3 * (time.perf_counter() - t0))
            cpu_ms.add(1e3 * (time.process_time() - c0))
            t0 = time.perf_counter()
            exposition(registry, OPENMETRICS)
            open_ms.add(1e3 * (time.perf_counter() - t0))
    finally:
        gc.enable()
        collector.close()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            os.waitpid(pid, 0)
    return text_ms, open_ms, cpu_ms, first_ms, size


def _old_scoreboard() -> ModuleType | None:
    try:
        text = subprocess.run(["git", "-C", str(ROOT), "show",
                               f"{PRE_METRICS}:gearman_driver/scoreboard.py"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(ROOT / ".bench-old-scoreboard.py")
    path.write_text(text)
    try:
        spec = importlib.util.spec_from_file_location("old_scoreboard", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["old_scoreboard"] = module
        spec.loader.exec_module(module)
        return module
    finally:
        path.unlink()


def _pair_ns(writer: Any, calls: int, with_function: bool) -> float:
    """ns per job_started + job_finished pair, one round."""
    t0 = time.perf_counter()
    if with_function:
        for _ in range(calls):
            writer.job_started(b"H:bench:1")
            writer.job_finished(None, 0)
    else:
        for _ in range(calls):
            writer.job_started(b"H:bench:1")
            writer.job_finished(None)
    return 1e9 * (time.perf_counter() - t0) / calls


def recording_figures(calls: int, rounds: int = 12) -> tuple[Figure, Figure, Figure]:
    """Rounds of the new and the old pair alternate, and each keeps its best round (the
    least disturbed by other work), so load shifts neither side alone."""
    now = Figure("job_started + job_finished, with metrics", "ns")
    before = Figure(f"job_started + job_finished at {PRE_METRICS}", "ns")
    added = Figure("added per job by counting it", "ns")
    old = _old_scoreboard()
    board = Scoreboard(1)
    writer = board.child_writer(board.allocate())
    writer.ready(os.getpid())
    if old is None:
        now.add(min(_pair_ns(writer, calls, True) for _ in range(rounds)))
        return now, before, added
    old_board = old.Scoreboard(1)
    old_writer = old_board.child_writer(old_board.allocate())
    old_writer.ready(os.getpid())
    best_new = best_old = float("inf")
    for _ in range(rounds):
        best_new = min(best_new, _pair_ns(writer, calls, True))
        best_old = min(best_old, _pair_ns(old_writer, calls, False))
    now.add(best_new)
    before.add(best_old)
    added.add(best_new - best_old)
    return now, before, added


def run(ctx: Context) -> Section:
    scrapes = 20 if ctx.quick else 100
    calls = 20_000 if ctx.quick else 50_000
    text_ms, open_ms, cpu_ms, first_ms, size = scrape_figures(scrapes)
    progress(f"metrics: scrape {text_ms.median:.2f} ms (CPU {cpu_ms.median:.2f} ms), "
             f"{size:,} bytes")
    figures = [recording_figures(calls) for _ in range(ctx.reps)]
    now, before, added = (Figure(f.label, f.unit) for f in figures[0])
    for a, b, c in figures:
        now.add(a.median if a.ok else None)
        before.add(b.median if b.ok else None)
        added.add(c.median if c.ok else None)
    progress(f"metrics: counting a job adds {added.cell()} ns")
    section = Section(
        "metrics", "Metrics: a scrape in the master, counting in the child",
        intro=(__doc__.split("\n\n", 1)[1].replace("\n", " ").strip()
               .replace("commit PRE_METRICS", f"commit {PRE_METRICS}") if __doc__ else ""))
    library = f"prometheus_client {importlib.metadata.version('prometheus_client')}"
    section.tables.append((
        f"Scrape of {JOBS} jobs, {JOBS * PER_JOB} processes ({size:,} bytes of text), "
        f"{scrapes} scrapes, {library}", ["figure", "value"],
        [[f.label, f"{f.cell()} {f.unit}"] for f in (text_ms, open_ms, cpu_ms, first_ms)]))
    section.tables.append((
        f"Counting in the child ({calls:,} pairs a round, best of 12 alternating rounds, "
        f"{ctx.reps} repeats)",
        ["figure", "value"], [[f.label, f"{f.cell()} {f.unit}"] for f in (now, before, added)]))
    section.headline.append(Headline(
        f"metrics scrape, {JOBS} jobs / {JOBS * PER_JOB} processes (master CPU, {library})",
        f"{cpu_ms.cell()} ms", "—", None, "≤ 10 ms", cpu_ms.median <= 10 if cpu_ms.ok else None))
    section.headline.append(Headline(
        "counting a job's duration and result in the child", f"{added.cell()} ns",
        f"{fmt(before.median)} ns (pair before metrics)", None, "≤ 1,000 ns",
        added.median <= 1000 if added.ok else None))
    return section
