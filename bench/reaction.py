"""Reaction: how fast the master scales a job up for a burst and back down, and its idle CPU.

A burst of 2,000 jobs of 10 ms hits a job with min 1 and max M (interval 1, max_idle_time 2);
gearmand's `workers` and `status` are polled every 10 ms from the moment the burst is sent.
"""

from __future__ import annotations

import time

from bench import plots
from bench.common import (
    Admin,
    Context,
    Figure,
    Headline,
    Section,
    driver_workers,
    private_gearmand,
    progress,
)
from bench.daemon import Daemon
from tests.driver_util import cpu_seconds
from tests.gearmand_util import TestClient
from tests.gearmand_util import wait_for as wait_until

SLEEP = "bench.sleep"
BURST = 2000
JOB_SECONDS = 0.01
MAX_IDLE = 2


def burst(ctx: Context, port: int, top: int
          ) -> tuple[float | None, float | None, float | None, list[tuple[float, float]]]:
    """(burst → max registered, drain time, drain end → back to 1, timeline of processes)."""
    daemon = Daemon(ctx.tmp / "reaction", port, "bw_sleep", name=f"burst{top}",
                    jobs={SLEEP: (1, top)}, interval=1, max_idle_time=MAX_IDLE)
    timeline: list[tuple[float, float]] = []
    try:
        with Admin(port) as admin:
            daemon.start()
            if not wait_until(lambda: admin.registered(SLEEP, daemon.pid) == 1, 60, 0.05):
                daemon.check()
                return None, None, None, timeline
            time.sleep(1.5)  # the observer has polled at least once; steady state
            t0 = time.monotonic()
            with TestClient(port) as client:
                client.submit_many_bg(SLEEP, [b"10"] * BURST)
            to_max = drained = back = None
            while time.monotonic() - t0 < 60:
                now = time.monotonic() - t0
                procs = admin.registered(SLEEP, daemon.pid)
                timeline.append((now, procs))
                if to_max is None and procs >= top:
                    to_max = now
                if drained is None and admin.queued(SLEEP) == 0:
                    drained = now
                if drained is not None and procs == 1 and to_max is not None:
                    back = now - drained
                    break
                time.sleep(0.01)
            return to_max, drained, back, timeline
    finally:
        daemon.stop()


def idle_cpu(ctx: Context, port: int, window: float) -> Figure:
    """Master CPU (% of one core) with 50 jobs, interval 1, nothing queued."""
    figure = Figure("master CPU, 50 jobs idle, interval 1", "%")
    jobs = {f"bench.many.j{i:02d}": (1, 2) for i in range(50)}
    daemon = Daemon(ctx.tmp / "reaction", port, "bw_many", name="idle", jobs=jobs, interval=1)
    try:
        with Admin(port) as admin:
            daemon.start()
            if not wait_until(lambda: driver_workers(admin, daemon.pid) >= 50, 120, 0.1):
                daemon.check()
                return figure
        time.sleep(2)
        for _ in range(ctx.reps):
            c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(window)
            figure.add(100 * (cpu_seconds(daemon.pid) - c0) / (time.monotonic() - t0))
    finally:
        daemon.stop()
    return figure


def run(ctx: Context) -> Section:
    tops = (8,) if ctx.quick else (8, 16)
    to_max = {m: Figure(f"burst → {m} processes", "s") for m in tops}
    drain = {m: Figure(f"drain / ideal, max {m}", "×") for m in tops}
    back = {m: Figure(f"drained → back to 1, max {m}", "s") for m in tops}
    timelines: dict[str, list[tuple[float, float]]] = {}
    with private_gearmand(ctx.tmp) as port:
        for rep in range(ctx.reps):
            for m in tops:
                up, drained, down, timeline = burst(ctx, port, m)
                to_max[m].add(up)
                drain[m].add(drained / (BURST * JOB_SECONDS / m) if drained else None)
                back[m].add(down)
                timelines.setdefault(f"max {m}", timeline)
                progress(f"reaction rep {rep + 1}/{ctx.reps}: max {m}: up {up} s, drained "
                         f"{drained} s, back to 1 {down} s after")
        cpu = idle_cpu(ctx, port, 3.0 if ctx.quick else 10.0)
        progress(f"reaction: master idle CPU {cpu.cell()} %")
    return _section(ctx, tops, to_max, drain, back, cpu, timelines)


def _section(ctx: Context, tops: tuple[int, ...], to_max: dict[int, Figure],
             drain: dict[int, Figure], back: dict[int, Figure], cpu: Figure,
             timelines: dict[str, list[tuple[float, float]]]) -> Section:
    section = Section("reaction", "Reaction: scaling for a burst, and the idle master",
                      intro=f"{BURST:,} background jobs of 10 ms sent at once to a job with min 1, "
                            f"max M, interval 1, max_idle_time {MAX_IDLE}. 'up' = burst sent → M "
                            "processes registered at gearmand; 'drain / ideal' = time until the "
                            f"queue is empty over {BURST:,} × 10 ms / M; 'back' = queue empty → 1 "
                            f"process registered. Median of {ctx.reps} (min–max).")
    rows = [[str(m), to_max[m].cell(), drain[m].cell(), back[m].cell()] for m in tops]
    section.tables.append(("", ["max", "up (s)", "drain / ideal (×)", "back to 1 (s)"], rows))
    section.tables.append(("Master CPU while idle", ["figure", "% of one core"],
                           [[cpu.label + f", {'3' if ctx.quick else '10'} s windows",
                             cpu.cell()]]))
    for m in tops:
        f = to_max[m]
        section.headline.append(Headline(
            f"reaction, burst → {m} processes", f.cell() + " s", "0.44 s (Gearman::Driver, pub.)",
            f.median / 0.44 if f.ok else None, "≤ 0.2 s", f.median <= 0.2 if f.ok else None))
        d = drain[m]
        section.headline.append(Headline(
            f"reaction, drain time / ideal, max {m}", d.cell() + "×", "ideal "
            f"{BURST * JOB_SECONDS / m:.2f} s", d.median if d.ok else None, "≤ 1.1",
            d.median <= 1.1 if d.ok else None))
    section.headline.append(Headline("master CPU idle, 50 jobs, interval 1", cpu.cell() + " %",
                                     "—", None, "≤ 0.5 %", cpu.median <= 0.5 if cpu.ok else None))
    section.notes.append("Published peer (see Peers): Gearman::Driver 0.44 s median from burst to "
                         "8 processes, drain 1.2× ideal; GearmanManager and supervisord run a "
                         "fixed count.")
    png = ctx.plot_dir / "bench-reaction.png"
    if plots.lines(png, "Processes registered after a burst of 2,000 × 10 ms jobs (first run)",
                   "seconds since the burst", "processes", timelines):
        section.plots.append((png.name, "Processes over time during and after the burst"))
    return section
