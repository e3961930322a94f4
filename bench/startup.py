"""Start-up: from launch until N processes that import the 100 MB module are registered.

gearman-driver imports the module once and forks; separately started interpreters each import
it themselves. Registration is read from gearmand's `workers` (polled every 20 ms).
"""

from __future__ import annotations

import time

from bench import plots
from bench.common import Admin, Context, Figure, Headline, Section, private_gearmand, progress
from bench.daemon import Daemon, ProcessGroup, bare_worker_argv

LOOKUP = "bench.lookup"


def _driver(ctx: Context, port: int, n: int) -> float | None:
    daemon = Daemon(ctx.tmp / "startup", port, "bw_big", name="startup", jobs={LOOKUP: (n, n)})
    try:
        with Admin(port) as admin:
            daemon.start()
            while admin.registered(LOOKUP, daemon.pid) < n:
                daemon.check()
                if time.monotonic() - daemon.started_at > 120:
                    return None
                time.sleep(0.02)
            return time.monotonic() - daemon.started_at
    finally:
        daemon.stop()


def _separate(port: int, n: int) -> float | None:
    with Admin(port) as admin, ProcessGroup() as group:
        t0 = time.monotonic()
        for _ in range(n):
            group.spawn(bare_worker_argv(port, "bw_big.jobs", LOOKUP))
        while admin.registered(LOOKUP) < n:
            if time.monotonic() - t0 > 300:
                return None
            time.sleep(0.02)
        return time.monotonic() - t0


def run(ctx: Context) -> Section:
    n = 16 if ctx.quick else 32
    driver = Figure(f"gearman-driver, one job with min {n}", "s")
    separate = Figure(f"{n} separate interpreters", "s")
    with private_gearmand(ctx.tmp) as port:
        for rep in range(ctx.reps):
            driver.add(_driver(ctx, port, n))
            separate.add(_separate(port, n))
            progress(f"startup rep {rep + 1}/{ctx.reps}: driver {driver.values[-1]:.2f} s, "
                     f"separate {separate.values[-1]:.2f} s")
    section = Section("startup", f"Start-up: launch → {n} processes registered",
                      intro=f"Time from starting the program(s) until gearmand's `workers` lists "
                            f"{n} connections registered for `bench.lookup`, each process having "
                            "the 100 MB module (bw_big) imported. Median of "
                            f"{ctx.reps} (min–max).")
    section.tables.append(("", ["way", "seconds"], [[driver.label, driver.cell()],
                                                     [separate.label, separate.cell()]]))
    r = driver.median / separate.median if driver.ok and separate.ok else None
    section.headline.append(Headline(f"start-up, {n} processes with 100 MB: driver / separate",
                                     driver.cell() + " s", separate.cell() + " s", r, "< 1",
                                     r < 1 if r is not None else None))
    png = ctx.plot_dir / "bench-startup.png"
    if plots.bars(png, f"Launch → {n} processes registered", "s",
                  {f"{n} processes": {"gearman-driver": driver, "separate": separate}}):
        section.plots.append((png.name, "Start-up time (median, min–max)"))
    return section
