"""Footprint: what one idle and one working child cost, and where a working child's pages go.

Eight processes of a trivial job (bench/workers/bw_echo, native backend) under one master:
PSS and USS (private pages) of the master and of each child once all are registered and idle,
then again after they drained a queue of echo jobs; and, for one child, its private memory per
mapping (smaps) and the pages the jobs made private (pagemap, bench/smaps.py).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

from bench import child_phases, smaps
from bench.common import (
    PYTHON,
    ROOT,
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
from tests.driver_util import children_of
from tests.gearmand_util import TestClient
from tests.gearmand_util import wait_for as wait_until

ECHO = "bench.echo"
PROCS = 8
SETTLE = 1.0
FLOOR = "USS of a child stopped right after fork (8 siblings, no code of ours run)"


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


FORK_FLOOR = """
import gc, os, signal, sys
gc.disable()
import gearman_driver.master.driver, gearman_driver.child.backends.native  # the master's code
gc.freeze()
for _ in range(8):
    if os.fork() == 0:
        os.kill(os.getpid(), signal.SIGSTOP)  # writes nothing more of its own
        os._exit(0)
print("forked", flush=True)
sys.stdin.read()
"""


def fork_floor() -> float:
    """Median USS (MB) of 8 children forked from a Python process holding the driver's code,
    each stopped right after the fork: what CPython's fork itself costs a child (its
    after-fork work rewrites interpreter state), before any code of ours runs in it."""
    proc = subprocess.Popen([PYTHON, "-c", FORK_FLOOR], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=str(ROOT))
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        kids = children_of(proc.pid)
        wait_until(lambda: all(_stopped(k) for k in kids), 10, 0.01)
        time.sleep(0.2)
        return statistics.median(uss_mb(k) for k in kids)
    finally:
        for kid in children_of(proc.pid):
            os.kill(kid, signal.SIGKILL)
        proc.communicate(timeout=10)


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return True


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
            floor = fork_floor()
            figures.setdefault(FLOOR, Figure(FLOOR, "MB")).add(floor)
            progress(f"footprint rep {rep + 1}/{ctx.reps}: {FLOOR}: {fmt(floor)} MB")
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
    idle_uss, work_uss = figures.get("idle child USS"), figures.get("working child USS")
    floor, master = figures.get(FLOOR), figures.get("master RSS")
    if idle_uss and work_uss and floor and master and idle_uss.ok and floor.ok:
        section.notes.append(
            f"Where a child's memory goes. An idle child holds {fmt(idle_uss.median)} MB of "
            f"its own pages (USS); {fmt(floor.median)} MB of that is CPython's fork itself (a "
            "child stopped right after fork already has them: the interpreter's after-fork "
            "work rewrites its state, thread and lock objects). The rest, "
            f"{fmt(idle_uss.median - floor.median)} MB, is what the child's own code writes: "
            "every object it touches gets its reference count written, which copies that "
            "object's 4 KiB page, and new objects land in the free slots of pools spread over "
            "the shared heap (see the table: pymalloc arenas, malloc's heap, libpython's data "
            "with the small ints, None and the type objects). Running jobs adds only "
            f"{fmt(work_uss.median - idle_uss.median)} MB more (the pages made private by the "
            "jobs, page by page from /proc/PID/pagemap with bench/smaps.py). The master "
            f"(RSS {fmt(master.median)} MB) is shared by all and counted once in the total. "
            "What would move it further: a quiet 'zygote' process that forks the workers "
            "instead of the busy master; Python 3.12's immortal objects (PEP 683: no "
            "refcount writes to None, small ints, interned strings); fewer modules in the "
            "master. Already done: the config is read in a short-lived process (ruamel.yaml, "
            "jsonschema and importlib.resources no longer load in the master), the children "
            "import nothing after the fork (setproctitle, libc's prctl and the idna codec "
            "are loaded by the master).")
    for key in ("idle child PSS", "working child PSS"):
        f = figures.get(key)
        if f is not None:
            section.headline.append(Headline(f"footprint, {key} (8 trivial, native)",
                                             f.cell() + " MB", "—", None, "record", None))
    return section
