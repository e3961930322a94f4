"""Footprint: what one idle and one working child cost, and where a working child's pages go.

Eight processes of a trivial job (bench/workers/bw_echo, native backend) under one master:
PSS and USS (private pages) of the master and of each child once all are registered and idle,
then again after they drained a queue of echo jobs; and, for one child, its private memory per
mapping (smaps) and the pages the jobs made private (pagemap, bench/smaps.py).
"""

from __future__ import annotations

import statistics
import time

from bench import smaps
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
from bench.daemon import Daemon
from tests.gearmand_util import TestClient
from tests.gearmand_util import wait_for as wait_until

ECHO = "bench.echo"
PROCS = 8
SETTLE = 1.0


def uss_mb(pid: int) -> float:
    return (pss_mb([pid], "Private_Clean") + pss_mb([pid], "Private_Dirty"))


def one_run(ctx: Context, port: int, jobs_per_child: int
            ) -> tuple[dict[str, float], dict[str, dict[str, int]], dict[str, dict[str, int]],
                       dict[str, int]]:
    """(figures, one child's smaps by kind idle, the same after jobs, pages made private)."""
    daemon = Daemon(ctx.tmp / "footprint", port, "bw_echo", name="footprint",
                    jobs={ECHO: (PROCS, PROCS)})
    try:
        with Admin(port) as admin:
            daemon.start()
            if not wait_until(lambda: admin.registered(ECHO, daemon.pid) == PROCS, 60, 0.05):
                daemon.check()
                raise RuntimeError("the children did not register")
            time.sleep(SETTLE)
            kids = daemon.children()
            out = {"master PSS": pss_mb([daemon.pid]), "master RSS": pss_mb([daemon.pid], "Rss"),
                   "master USS": uss_mb(daemon.pid),
                   "idle child PSS": statistics.median(pss_mb([k]) for k in kids),
                   "idle child USS": statistics.median(uss_mb(k) for k in kids),
                   "total idle PSS": pss_mb([daemon.pid, *kids])}
            probe = kids[0]
            kinds_idle, pages_idle = smaps.by_kind(probe), smaps.private_pages(probe)
            with TestClient(port) as client:
                client.submit_many_bg(ECHO, [b"x" * 16] * (PROCS * jobs_per_child))
            if not wait_until(lambda: admin.queued(ECHO) == 0, 300, 0.05):
                raise RuntimeError("echo jobs did not drain")
            time.sleep(SETTLE)
            out |= {"working child PSS": statistics.median(pss_mb([k]) for k in kids),
                    "working child USS": statistics.median(uss_mb(k) for k in kids),
                    "total PSS after jobs": pss_mb([daemon.pid, *kids])}
            kinds_after, pages_after = smaps.by_kind(probe), smaps.private_pages(probe)
            return out, kinds_idle, kinds_after, smaps.new_private(pages_idle, pages_after)
    finally:
        daemon.stop()


def run(ctx: Context) -> Section:
    jobs_per_child = 250 if ctx.quick else 2000
    figures: dict[str, Figure] = {}
    last: tuple[dict[str, dict[str, int]], dict[str, dict[str, int]], dict[str, int]] | None
    last = None
    with private_gearmand(ctx.tmp) as port:
        for rep in range(ctx.reps):
            values, idle, after, fresh = one_run(ctx, port, jobs_per_child)
            for key, value in values.items():
                figures.setdefault(key, Figure(key, "MB")).add(value)
            last = (idle, after, fresh)
            progress(f"footprint rep {rep + 1}/{ctx.reps}: " + ", ".join(
                f"{k} {fmt(v)} MB" for k, v in values.items()))
    assert last is not None
    return _section(ctx, jobs_per_child, figures, *last)


def _section(ctx: Context, jobs_per_child: int, figures: dict[str, Figure],
             idle: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
             fresh: dict[str, int]) -> Section:
    section = Section("footprint", "Footprint: idle and working child, page by page",
                      intro=__doc__.split("\n\n", 1)[1].strip().replace("\n", " ")
                      + f" Each child ran about {jobs_per_child:,} jobs. USS = Private_Clean + "
                        f"Private_Dirty. Median of {ctx.reps} (min–max); MB = MiB.")
    section.tables.append(("", ["figure", "MB"], [[f.label, f.cell()] for f in
                                                   figures.values()]))
    private = {k: v.get("Private_Dirty", 0) + v.get("Private_Clean", 0) for k, v in after.items()}
    rows = []
    for name in sorted(private, key=lambda k: -private[k])[:12]:
        was = idle.get(name, {})
        rows.append([name, str(was.get("Private_Dirty", 0) + was.get("Private_Clean", 0)),
                     str(private[name]), str(fresh.get(name, 0) * smaps.PAGE // 1024)])
    section.tables.append(("One working child's private memory by mapping (kB, last run)",
                           ["mapping", "idle", "after jobs", "made private by the jobs "
                            "(pagemap)"], rows))
    for key in ("idle child PSS", "working child PSS"):
        f = figures.get(key)
        if f is not None:
            section.headline.append(Headline(f"footprint, {key} (8 trivial, native)",
                                             f.cell() + " MB", "—", None, "record", None))
    return section
