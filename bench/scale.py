"""Scale: what one master costs as the work grows to hundreds of processes.

Two shapes at 50, 100, 250 and 500 processes: one job with `min_processes: N`, and N jobs of
one process each (N functions, bench/workers/bw_wide). For each run of the daemon: launch →
READY=1 (sent once every process is registered with gearmand) on a NOTIFY_SOCKET of ours;
total PSS per idle process beyond the master ((total PSS of master and children − the
master's RSS) / N: what each process adds to the pages the master holds); the master's CPU
while idle at interval 1; the console's `status` round trip; SIGHUP → READY=1; SIGTERM → exit.
The baseline is N separate interpreters (one bare pygearman worker each, the supervisord
way) until all are registered.
"""

from __future__ import annotations

import math
import signal
import time

from bench import plots
from bench.common import (
    Admin,
    Context,
    Figure,
    Headline,
    Section,
    fmt,
    private_gearmand,
    progress,
    pss_mb,
)
from bench.control import NotifySocket, status_round_trips
from bench.daemon import Daemon, ProcessGroup, bare_worker_argv
from tests.driver_util import cpu_seconds
from tests.gearmand_util import free_port
from tests.gearmand_util import wait_for as wait_until

ECHO = "bench.echo"
SHAPES = ("one job, min N", "N jobs × 1 process")
METRICS = {  # key: (label, unit, target, limit)
    "launch": ("launch → READY=1", "s", "≤ 5 s", 5.0),
    "pss": ("total PSS per idle process beyond the master", "MB", "≤ 1.5 MB", 1.5),
    "cpu": ("master CPU idle, interval 1", "% of a core", "≤ 1 %", 1.0),
    "console": ("console `status` round trip", "ms", "≤ 20 ms", 20.0),
    "reload": ("SIGHUP → READY=1", "s", "≤ 0.5 s", 0.5),
    "stop": ("SIGTERM → exit", "s", "≤ 1 s", 1.0),
}
SETTLE = 1.0
WHY = {  # what a missed figure costs, and what would move it
    "launch": "the master forks N children one after another and each connects, registers "
              "and answers an ECHO round trip with gearmand before READY=1; a faster machine "
              "or fewer processes per master move it",
    "pss": "each worker's own pages (its USS) plus its share of pages only the workers share: "
           "see the Footprint section, step by step, for where they come from",
    "cpu": "each turn (at most 0.2 s apart) the master walks every job, and each interval it "
           "parses gearmand's status and workers lists for every function; the walk could be "
           "skipped for jobs with nothing to do",
    "console": "`status` answers one line per job, so its length grows with the jobs",
    "reload": "a reload forks a reader that imports ruamel.yaml and jsonschema (about 0.1 s) "
              "and then compares every job; a reader kept warm would save the import",
    "stop": "the master signals N children and reaps N exits; gearmand sees N disconnects",
}


def _daemon(ctx: Context, port: int, shape: str, n: int, notify: NotifySocket,
            console: int) -> Daemon:
    env = {"NOTIFY_SOCKET": str(notify.path)}
    if shape == SHAPES[0]:
        namespace, jobs = "bw_echo", {ECHO: (n, n)}
    else:
        namespace = "bw_wide"
        jobs = {f"bench.wide.j{i:03d}": (1, 1) for i in range(n)}
        env["BW_WIDE_JOBS"] = str(n)
    return Daemon(ctx.tmp / "scale", port, namespace, name=f"scale{n}", jobs=jobs, env=env,
                  console_port=console)


def console_round_trip(port: int, samples: int) -> Figure:
    """Median of `status` round trips on one console connection."""
    return status_round_trips(port, samples, Figure("console status", "ms"))


def one_run(ctx: Context, port: int, shape: str, n: int) -> dict[str, float | None]:
    """Every figure of METRICS for one daemon with n processes in `shape`."""
    out: dict[str, float | None] = dict.fromkeys(METRICS)
    notify = NotifySocket(ctx.tmp / f"scale-{n}.sock")
    console = free_port()
    daemon = _daemon(ctx, port, shape, n, notify, console)
    try:
        daemon.start()
        ready = notify.wait("READY=1", daemon.started_at, 120, daemon.alive)
        if ready is None:
            daemon.check()
            raise RuntimeError(f"no READY=1 within 120 s for {n} processes ({shape})")
        out["launch"] = ready - daemon.started_at
        time.sleep(SETTLE)
        kids = daemon.children()
        # what the processes add beyond the pages the master holds: (total PSS − master RSS) / N
        total = pss_mb([daemon.pid, *kids])
        out["pss"] = (total - pss_mb([daemon.pid], "Rss")) / len(kids) if kids else None
        window = 2.0 if ctx.quick else 5.0
        c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(window)
        out["cpu"] = 100 * (cpu_seconds(daemon.pid) - c0) / (time.monotonic() - t0)
        out["console"] = console_round_trip(console, 5 if ctx.quick else 20).median
        sent = time.monotonic()
        daemon.signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING=1", sent, 30, daemon.alive)
        done = notify.wait("READY=1", reloading, 60, daemon.alive) if reloading else None
        out["reload"] = done - sent if done else None
        assert daemon.proc is not None
        t0 = time.monotonic()
        daemon.signal(signal.SIGTERM)
        daemon.proc.wait(60)
        out["stop"] = time.monotonic() - t0
        return out
    finally:
        daemon.stop()
        notify.close()


def separate(port: int, n: int) -> float | None:
    """n bare pygearman interpreters (bw_echo): launch → all registered."""
    with Admin(port) as admin, ProcessGroup() as group:
        t0 = time.monotonic()
        for _ in range(n):
            group.spawn(bare_worker_argv(port, "bw_echo.jobs", ECHO))
        if not wait_until(lambda: admin.registered(ECHO) >= n, 600, 0.05):
            return None
        return time.monotonic() - t0


def run(ctx: Context) -> Section:
    counts = (10, 20) if ctx.quick else (50, 100, 250, 500)
    sep_n = counts[0]
    figures = {(s, n, k): Figure(f"{METRICS[k][0]}, {s}, {n}", METRICS[k][1])
               for s in SHAPES for n in counts for k in METRICS}
    sep = Figure(f"{sep_n} separate interpreters, launch → all registered", "s")
    with private_gearmand(ctx.tmp) as port:
        for rep in range(ctx.reps):
            for shape in SHAPES:
                for n in counts:
                    values = one_run(ctx, port, shape, n)
                    for key, value in values.items():
                        figures[shape, n, key].add(value)
                    progress(f"scale rep {rep + 1}/{ctx.reps}: {shape}, {n}: " + ", ".join(
                        f"{k} {fmt(v) if v is not None else 'n/a'}" for k, v in values.items()))
            sep.add(separate(port, sep_n))
            progress(f"scale rep {rep + 1}/{ctx.reps}: {sep_n} separate interpreters "
                     f"{fmt(sep.values[-1]) if sep.values else 'n/a'} s")
    return _section(ctx, counts, figures, sep, sep_n)


def growth(points: list[tuple[int, Figure]]) -> str:
    """Log-log slope from the smallest to the largest count: 1 is linear, < 1 better."""
    points = [(n, f) for n, f in points if f.ok and f.median > 0]
    if len(points) < 2:
        return "n/a"
    (n0, f0), (n1, f1) = points[0], points[-1]
    return f"{math.log(f1.median / f0.median) / math.log(n1 / n0):.2f}"


def _section(ctx: Context, counts: tuple[int, ...], figures: dict[tuple[str, int, str], Figure],
             sep: Figure, sep_n: int) -> Section:
    top = counts[-1]
    section = Section("scale", "Scale: one master, up to 500 processes",
                      intro=__doc__.split("\n\n", 1)[1].replace("\n", " ").strip()
                      + f" Median of {ctx.reps} (min–max). Growth = log-log slope of the median "
                        f"from {counts[0]} to {top} processes (1 = linear, < 1 = better).")
    sep_per = sep.median / sep_n if sep.ok else float("nan")
    for shape in SHAPES:
        rows = []
        for key, (label, unit, _, _) in METRICS.items():
            points = [(n, figures[shape, n, key]) for n in counts]
            rows.append([f"{label} ({unit})", *[f.cell() for _, f in points], growth(points)])
        extrapolated = [f"{fmt(sep_per * n)}" + ("" if n == sep_n else " (extrapolated)")
                        for n in counts]
        rows.append(["separate interpreters, launch → all registered (s)", *extrapolated, "1"])
        section.tables.append((shape, ["figure", *[f"N = {n}" for n in counts], "growth"], rows))
    section.notes.append(
        f"Separate interpreters were started {sep_n} at a time ({sep.cell()} s for {sep_n}); "
        f"larger counts are extrapolated linearly from that per-interpreter cost "
        f"({fmt(sep_per)} s), since each interpreter's start-up is CPU work on the same 2 cores.")
    bends = [f"{METRICS[key][0]} ({shape}: {slope})" for shape in SHAPES for key in METRICS
             if (slope := growth([(n, figures[shape, n, key]) for n in counts])) != "n/a"
             and float(slope) > 1.1]
    section.notes.append(
        "Growth: " + ("every figure grows linearly or slower with the process count."
                      if not bends else "faster than linear: " + "; ".join(bends) + ".")
        + " Per-process figures (PSS) should stay flat; totals (launch, stop) grow with the "
          "work; the master's idle CPU and the console grow with the jobs it walks each turn.")
    missed = sorted({key for shape in SHAPES for key, (_, _, _, limit) in METRICS.items()
                     if figures[shape, top, key].ok
                     and figures[shape, top, key].median > limit})
    for key in missed:
        section.notes.append(f"Missed at N = {top}: {METRICS[key][0]}. Why: {WHY[key]}.")
    for shape in SHAPES:
        for key, (label, unit, target, limit) in METRICS.items():
            f = figures[shape, top, key]
            section.headline.append(Headline(
                f"scale, {label}, {shape}, N = {top}", f"{f.cell()} {unit}", "—", None, target,
                f.median <= limit if f.ok else None))
        launch = figures[shape, top, "launch"]
        speedup = sep_per * top / launch.median if launch.ok and sep.ok else None
        section.headline.append(Headline(
            f"scale, launch speed-up vs separate interpreters, {shape}, N = {top}",
            f"{launch.cell()} s", f"{fmt(sep_per * top)} s (extrapolated from {sep_n})",
            speedup, "≥ 10×", speedup >= 10 if speedup is not None else None))
    png = ctx.plot_dir / "bench-scale.png"
    grid = {f"{label} ({unit})": {shape: [(float(n), figures[shape, n, key]) for n in counts]
                                  for shape in SHAPES}
            for key, (label, unit, _, _) in METRICS.items()}
    if plots.panels(png, "Cost against the number of processes", "processes", grid):
        section.plots.append((png.name, "Scale figures against the process count (median, "
                                        "min–max)"))
    return section
