"""Per-job overhead: a child's loop run in-process under cProfile, time attributed by file.

The backend is built as run_child builds it (make_runner + backend_class(name)(...)), without
forking, and stops once it has run every queued job. The wrapper's own cost per job is also
timed without the profiler: the runner around a trivial body against the body called alone.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from collections import defaultdict
from collections.abc import Callable

from bench.common import (
    WORKERS_DIR,
    Context,
    Figure,
    Headline,
    Section,
    fmt,
    private_gearmand,
    progress,
)
from gearman_driver.child.backends import BackendHooks, GearmanJob, JobResult, backend_class
from gearman_driver.child.recycle import Recycler
from gearman_driver.child.runner import make_runner
from gearman_driver.jobs.loader import job_specs
from gearman_driver.jobs.table import JobSpec
from gearman_driver.scoreboard import Scoreboard
from tests.gearmand_util import TestClient

ECHO = "bench.echo"
CATEGORIES = ("pygearman (gearman/)", "our wrapper (child.py, scoreboard.py)",
              "our native backend (backends/native*, protocol.py)",
              "our pygearman adapter (backends/pygearman_backend.py)",
              "system (socket send/recv, select)", "job body", "other (stdlib, interpreter)")


def _spec() -> JobSpec:
    sys.path.insert(0, str(WORKERS_DIR))
    from bw_echo.jobs import Echo

    return job_specs(Echo(server="127.0.0.1"))[0]


def category(filename: str, name: str) -> str:
    if "/gearman/" in filename:
        return CATEGORIES[0]
    if filename.endswith(("gearman_driver/child/process.py", "gearman_driver/scoreboard.py")):
        return CATEGORIES[1]
    if "backends/native" in filename or filename.endswith("gearman_driver/protocol.py"):
        return CATEGORIES[2]
    if filename.endswith("pygearman_backend.py"):
        return CATEGORIES[3]
    if filename == "~" and any(word in name for word in ("recv", "send", "select", "poll",
                                                         "epoll")):
        return CATEGORIES[4]
    if "bw_echo" in filename:
        return CATEGORIES[5]
    return CATEGORIES[6]


def _run_backend(port: int, backend: str, n: int, profiler: cProfile.Profile | None) -> float:
    """Queue n jobs, run the backend until it has done them; return the seconds it took."""
    with TestClient(port) as client:
        client.submit_many_bg(ECHO, [b"x" * 16] * n)
    spec = _spec()
    board = Scoreboard(1)
    writer = board.child_writer(board.allocate())
    done = [0]

    def after_job(job: GearmanJob) -> None:
        done[0] += 1

    runner = make_runner(spec, spec.methods[0], writer, after_job)
    hooks = BackendHooks(should_stop=lambda: done[0] >= n, poll_interval=0.2)
    worker = backend_class(backend)([("127.0.0.1", port)], "bench-profile", {ECHO: runner}, hooks)
    t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    worker.run()
    if profiler is not None:
        profiler.disable()
    return time.perf_counter() - t0


def attribute(profiler: cProfile.Profile) -> tuple[dict[str, float], list[tuple[float, str, str]]]:
    """Seconds per category, and the functions by own time (seconds, category, function)."""
    stats = pstats.Stats(profiler)
    by_cat: dict[str, float] = defaultdict(float)
    funcs: list[tuple[float, str, str]] = []
    for (filename, line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        tottime = row[2]
        cat = category(filename, name)
        by_cat[cat] += tottime
        short = name if filename == "~" else f"{filename.split('/')[-1]}:{line} {name}"
        funcs.append((tottime, cat, short))
    funcs.sort(reverse=True)
    return by_cat, funcs


class _Job(GearmanJob):
    __slots__ = ()

    def send_status(self, numerator: int, denominator: int) -> None:
        pass

    def send_data(self, data: bytes | str) -> None:
        pass

    def send_warning(self, data: bytes | str) -> None:
        pass


def wrapper_cost_us(calls: int) -> float:
    """µs per job that make_runner's wrapper adds around a trivial body."""
    spec = _spec()
    method = spec.methods[0]
    board = Scoreboard(1)
    # no after_job: as a child without recycling limits builds it
    runner = make_runner(spec, method, board.child_writer(board.allocate()), None)
    job = _Job(b"H:1", b"", ECHO, b"x" * 16)
    body = method.body

    def direct() -> JobResult:
        return JobResult("complete", body(job, job.workload))

    def wrapped() -> JobResult:
        return runner(job)

    return 1e6 * (_cpu_time(wrapped, calls) - _cpu_time(direct, calls)) / calls


def _cpu_time(fn: Callable[[], object], calls: int) -> float:
    """CPU seconds (this process's, so time lost to other work on the machine is not
    counted) that `calls` calls of fn take; the best of three."""
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, time.process_time() - t0)
    return best


def scoreboard_cost_us(calls: int) -> float:
    """µs per job of the child's three scoreboard writes (job started, finished, result
    sent), against an empty call."""
    board = Scoreboard(1)
    writer = board.child_writer(board.allocate())

    def job() -> None:
        writer.job_started(b"H:host:12345")
        writer.job_finished(None, 0)
        writer.result_sent(True)

    return 1e6 * (_cpu_time(job, calls) - _cpu_time(lambda: None, calls)) / calls


def rss_check_cost_us(calls: int) -> float:
    """µs per job that `max_rss_mb` adds: the after-job check with a limit never reached,
    against the same check with the limit off (one pread of /proc/self/statm)."""
    def timed(recycler: Recycler) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            recycler.after_job()
        return time.perf_counter() - t0

    return 1e6 * (timed(Recycler(0, 1e9)) - timed(Recycler(0, 0))) / calls


def run(ctx: Context) -> Section:
    n = 5_000 if ctx.quick else 20_000
    backends = ("pygearman", "native")
    rates = {b: Figure(f"{b}, in-process, no profiler", "jobs/s") for b in backends}
    wrap = Figure("wrapper cost per job", "µs")
    rss = Figure("max_rss_mb check per job", "µs")
    board = Figure("scoreboard writes per job", "µs")
    profiles: dict[str, tuple[dict[str, float], list[tuple[float, str, str]], float]] = {}
    with private_gearmand(ctx.tmp) as port:
        for b in backends:
            profiler = cProfile.Profile()
            seconds = _run_backend(port, b, n, profiler)
            by_cat, funcs = attribute(profiler)
            profiles[b] = (by_cat, funcs, seconds)
            progress(f"profile: {b}: {n:,} jobs under cProfile in {seconds:.2f} s")
        for rep in range(ctx.reps):
            for b in backends:
                rates[b].add(n / _run_backend(port, b, n, None))
            wrap.add(wrapper_cost_us(20_000 if ctx.quick else 100_000))
            rss.add(rss_check_cost_us(20_000 if ctx.quick else 100_000))
            board.add(scoreboard_cost_us(20_000 if ctx.quick else 100_000))
            progress(f"profile rep {rep + 1}/{ctx.reps}: "
                     + ", ".join(f"{b} {rates[b].values[-1]:,.0f} jobs/s" for b in backends)
                     + f"; wrapper {wrap.values[-1]:.2f} µs/job"
                     + f"; max_rss_mb check {rss.values[-1]:.2f} µs/job"
                     + f"; scoreboard {board.values[-1]:.2f} µs/job")
    return _section(ctx, n, backends, profiles, rates, wrap, rss, board)


def _section(ctx: Context, n: int, backends: tuple[str, ...],
             profiles: dict[str, tuple[dict[str, float], list[tuple[float, str, str]], float]],
             rates: dict[str, Figure], wrap: Figure, rss: Figure, board: Figure) -> Section:
    section = Section("profile", "Profile: where a child's time per job goes",
                      intro=f"{n:,} trivial jobs run by one backend in the benchmark's own process "
                            "(make_runner + backend_class(name)(...), as a child builds them; no "
                            "fork), once under cProfile. Own time (tottime) summed per category; "
                            "µs/job are under the profiler, which inflates Python-level calls, "
                            "so read them as shares.")
    rows = []
    for cat in CATEGORIES:
        cells = [cat]
        for b in backends:
            by_cat, _, _ = profiles[b]
            total = sum(by_cat.values()) or 1.0
            cells.append(f"{1e6 * by_cat.get(cat, 0.0) / n:.1f} µs "
                         f"({100 * by_cat.get(cat, 0.0) / total:.0f} %)")
        rows.append(cells)
    section.tables.append(("Own time per job by category (under cProfile)",
                           ["category", *[f"{b} backend" for b in backends]], rows))
    for b in backends:
        _, funcs, _ = profiles[b]
        top = [[f"{i + 1}", f"`{name}`", cat, f"{1e6 * t / n:.1f} µs"]
               for i, (t, cat, name) in enumerate(funcs[:3])]
        section.tables.append((f"Three biggest costs, {b} backend",
                               ["#", "function", "category", "own time per job"], top))
    section.tables.append(("Without the profiler", ["figure", "value"],
                           [[rates[b].label, rates[b].cell()] for b in backends]
                           + [["wrapper (make_runner: scoreboard writes, hooks, result coercion) "
                               "per job, vs the body called alone", wrap.cell() + " µs"],
                              ["`max_rss_mb` check (one pread of /proc/self/statm) per job, vs "
                               "the limit off", rss.cell() + " µs"],
                              ["scoreboard writes per job (job started, finished, result sent), "
                               "CPU time", board.cell() + " µs"]]))
    section.headline.append(Headline("wrapper cost per job", wrap.cell() + " µs", "—", None,
                                     "≤ 2 µs", wrap.median <= 2 if wrap.ok else None))
    section.headline.append(Headline("scoreboard writes per job", board.cell() + " µs", "—",
                                     None, "≤ 2 µs", board.median <= 2 if board.ok else None))
    shares = []
    for b in backends:
        _, funcs, _ = profiles[b]
        shares.append(f"{b}: " + "; ".join(f"{name} {fmt(1e6 * t / n)} µs" for t, _, name
                                          in funcs[:3]))
    section.notes.append("Biggest three per backend — " + " | ".join(shares))
    return section
