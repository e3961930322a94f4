"""Footprint: what one idle and one working child cost, and where a working child's pages go.

Eight processes of a trivial job (bench/workers/bw_echo, native backend) under one master:
PSS and USS (private pages) of the master and of each child once all are registered and idle,
then again after they drained a queue of echo jobs; and, for one child, its private memory per
mapping (smaps) and the pages the jobs made private (pagemap, bench/smaps.py).
"""

from __future__ import annotations

import statistics
import time

from bench import child_phases, fork_floor, smaps
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
    uss_mb,
)
from bench.daemon import Daemon
from tests.gearmand_util import TestClient
from tests.gearmand_util import wait_for as wait_until

ECHO = "bench.echo"
PROCS = 8
SETTLE = 1.0
FLOOR = "USS of a child stopped right after fork (8 siblings, no code of ours run)"
BEYOND = "idle PSS per process beyond the master ((total − master RSS) / 8)"
LOOP_BEYOND = "minimal loops: idle PSS per process beyond their parent ((total − parent RSS) / 8)"
#: The floors' figures (bench/fork_floor.py), by image and figure.
FLOORS = {
    ("bare", "child USS"): "USS of a child stopped right after fork, bare interpreter "
                           "(nothing imported)",
    ("driver", "child USS"): FLOOR,
    ("loop", "child USS"): "USS of an idle minimal loop forked from the driver's image "
                           "(bench/minimal_worker, registered)",
    ("loop", "parent RSS"): "RSS of that loops' parent (the driver's image)",
    ("loop", "total PSS"): "total PSS, 8 idle minimal loops forked from the driver's image, "
                           "parent included",
}


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
            out[BEYOND] = (out["total idle PSS"] - out["master RSS"]) / len(kids)
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
            for image in fork_floor.IMAGES:
                got = fork_floor.measure(image, port)
                for (which, key), label in FLOORS.items():
                    if which == image:
                        figures.setdefault(label, Figure(label, "MB")).add(got[key])
                if image == "loop":
                    figures.setdefault(LOOP_BEYOND, Figure(LOOP_BEYOND, "MB")).add(
                        (got["total PSS"] - got["parent RSS"]) / fork_floor.PROCS)
                progress(f"footprint rep {rep + 1}/{ctx.reps}: {image} image: " + ", ".join(
                    f"{k} {fmt(v)} MB" for k, v in got.items()))
        steps = [] if ctx.quick else child_phases.measure(ctx.tmp, port, PROCS)
    assert last is not None
    return _section(ctx, jobs_per_child, figures, *last, steps)


def _section(ctx: Context, jobs_per_child: int, figures: dict[str, Figure],
             idle: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
             fresh: dict[str, int], steps: list[tuple[str, str, float]]) -> Section:
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
    if steps:
        rows, before = [], 0.0
        for step, what, uss in steps:
            rows.append([step, what, fmt(uss), f"+{fmt(uss - before)}" if before else "—"])
            before = uss
        section.tables.append((
            "A child's private pages (USS) after each step of its start (bench/child_phases.py: "
            "8 children stop themselves there; one run)",
            ["step", "what ran", "USS (MB)", "step's share (MB)"], rows))
    note = _where_it_goes(figures)
    if note:
        section.notes.append(note)
    total, loop_total = figures.get("total idle PSS"), figures.get(FLOORS[("loop", "total PSS")])
    if total and loop_total and total.ok and loop_total.ok:
        section.headline.append(Headline(
            "footprint, 8 idle trivial workers, total PSS: driver / minimal loop forked from "
            "the same image", total.cell() + " MB", loop_total.cell() + " MB",
            total.median / loop_total.median, "≤ 20 MB", total.median <= 20))
    beyond, loop_beyond = figures.get(BEYOND), figures.get(LOOP_BEYOND)
    if beyond and loop_beyond and beyond.ok and loop_beyond.ok:
        section.headline.append(Headline(
            "footprint, idle PSS per process beyond the master (8): driver / minimal loop "
            "forked from the same image", beyond.cell() + " MB", loop_beyond.cell() + " MB",
            beyond.median / loop_beyond.median, "≤ 1.5 MB", beyond.median <= 1.5))
    for key in ("idle child PSS", "working child PSS"):
        f = figures.get(key)
        if f is not None:
            section.headline.append(Headline(f"footprint, {key} (8 trivial, native)",
                                             f.cell() + " MB", "—", None, "record", None))
    return section


def _where_it_goes(figures: dict[str, Figure]) -> str:
    """The prose under the tables: the floors first, then what our child adds to them."""
    got = {key: figures.get(key) for key in (
        "idle child USS", "working child USS", "master RSS", "total idle PSS", BEYOND,
        LOOP_BEYOND, *FLOORS.values())}
    if not all(f is not None and f.ok for f in got.values()):
        return ""
    m = {key: f.median for key, f in got.items() if f is not None}
    bare, image = m[FLOORS[("bare", "child USS")]], m[FLOOR]
    loop, loop_total = m[FLOORS[("loop", "child USS")]], m[FLOORS[("loop", "total PSS")]]
    idle = m["idle child USS"]
    return (
        "Where a child's memory goes. Every page a child writes is copied for it, and in "
        "CPython 3.11 running any Python code writes: each object it touches gets its "
        "reference count written, each function called has its code object's warm-up counter "
        "and inline caches rewritten (the specialising interpreter), and each new object "
        "lands in a free slot of a pool somewhere in the shared heap. So the floors, measured "
        f"in this run: a child of a bare interpreter stopped right after fork holds {fmt(bare)} "
        f"MB; a child of the driver's image, {fmt(image)} MB before any code of ours runs — "
        "the after-fork handlers of the modules the master needs (threading's, logging's, "
        "random's) are the first Python code the child runs (`import threading` alone adds "
        "about 0.4 MB to the bare figure, measured by hand); and bench/minimal_worker's "
        f"60-line loop forked from that image, registered and idle, holds {fmt(loop)} MB, "
        f"{fmt(loop_total)} MB in all for 8 with their parent and {fmt(m[LOOP_BEYOND])} MB "
        "per process beyond the parent. So 20 MB for 8 idle workers with the master is below "
        "what a forked CPython 3.11 worker reaches even without any of the driver's "
        "guarantees, and 1.5 MB per process beyond the master is just above that loop. The "
        f"driver's idle child holds {fmt(idle)} MB ({fmt(m[BEYOND])} MB per process beyond "
        f"the master): {fmt(idle - loop)} MB more than the loop, written by what the loop "
        "does not do (the steps table: closing the master's descriptors, signal handlers and "
        "the parent-death signal, the log context, the process title, the runners and the "
        "backend, the selector and the registration). Running jobs adds "
        f"{fmt(m['working child USS'] - idle)} MB more (page by page from /proc/PID/pagemap "
        f"with bench/smaps.py). The master (RSS {fmt(m['master RSS'])} MB) is shared by all "
        "and counted once in the total. What would move it: a newer interpreter — Python "
        "3.12's immortal objects (PEP 683: no refcount writes to None, small ints, interned "
        "strings and static types). Measured by hand on this machine (pyenv builds, "
        "`python3.12 -m bench --only footprint`, 2026-11-30, same code): on 3.12.1 an idle "
        "child holds 1.84 MB, 1.57 MB per process beyond the master, 32.6 MB for 8 with the "
        "master; on 3.13.0 2.04 MB, 1.75 MB and 34.3 MB (Debian bookworm, the packaged "
        "platform, has 3.11). And a child that runs less distinct code before it idles. "
        "Already done: the "
        "master forks a batch of processes in one tight loop and records them after the last "
        "fork (its bookkeeping between two forks had copied about 0.4 MB of pages for each "
        "child: the 'fork' step measured 1.34 MB before, against 0.91 MB for children forked "
        "in a tight loop from the same running master), and freezes (gc.freeze) what the "
        "batch prepared right before its first fork (left young, each child's first "
        "collection walked every start's objects: 0.7 MB per child at 500 processes); a "
        "child sets its signal handlers with the C functions under the `signal` module's "
        "enum wrappers (0.1 MB); the config is read in a short-lived "
        "process (ruamel.yaml, jsonschema and importlib.resources never load in the master); "
        "the children import nothing after the fork (setproctitle, libc's prctl and the idna "
        "codec are loaded by the master).")
