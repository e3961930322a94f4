"""Memory: total PSS of every process a way of running N workers needs, idle and after work.

PSS (proportional set size, `/proc/<pid>/smaps_rollup`) splits each shared page among the
processes mapping it, so the sum over master + children is what the whole set really costs.
The 100 MB worker (bench/workers/bw_big) builds its data at import; its `lookup` job reads K
random entries, which writes refcounts and so copies pages into each child.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import plots
from bench.common import (
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
    ratio,
)
from bench.daemon import Daemon, ProcessGroup, bare_worker_argv
from tests.gearmand_util import TestClient
from tests.gearmand_util import wait_for as wait_until

LOOKUP = "bench.lookup"
ECHO = "bench.echo"
NO_FREEZE_ENV = "GEARMAN_DRIVER_NO_GC_FREEZE"
SETTLE = 1.0
WAYS = ("driver (fork + gc.freeze)", "driver, gc.freeze off", "separate interpreters")


def freeze_switch_supported() -> bool:
    """Whether the driver reads GEARMAN_DRIVER_NO_GC_FREEZE yet (another engineer adds it)."""
    sources = (ROOT / "gearman_driver").rglob("*.py")
    return any(NO_FREEZE_ENV in path.read_text() for path in sources)


def _work(port: int, procs: int, jobs_per_proc: int, lookups: int) -> None:
    """Give every process about `jobs_per_proc` lookup jobs and wait until they are done."""
    with TestClient(port) as client:
        client.submit_many_bg(LOOKUP, [str(lookups).encode()] * (procs * jobs_per_proc))
    with Admin(port) as admin:
        if not wait_until(lambda: admin.queued(LOOKUP) == 0, 600, 0.05):
            raise RuntimeError("lookup jobs did not drain in 600 s")


def measure(ctx: Context, port: int, way: str, procs: int, namespace: str,
            work: tuple[int, int] | None) -> tuple[float | None, float | None]:
    """(PSS idle, PSS after work) in MB for `procs` workers run `way`."""
    function = LOOKUP if namespace == "bw_big" else ECHO
    group = ProcessGroup()
    daemon: Daemon | None = None
    try:
        with Admin(port) as admin:
            if way.startswith("driver"):
                env = {NO_FREEZE_ENV: "1"} if "off" in way else {}
                daemon = Daemon(ctx.tmp / "memory", port, namespace, name="mem", env=env,
                                jobs={function: (procs, procs)})
                daemon.start()
                master = daemon.pid
                if not wait_until(lambda: admin.registered(function, master) == procs, 120, 0.05):
                    daemon.check()
                    raise RuntimeError(f"{procs} processes did not register")

                def pids() -> list[int]:
                    assert daemon is not None
                    return [master, *daemon.children()]
            else:
                for _ in range(procs):
                    group.spawn(bare_worker_argv(port, f"{namespace}.jobs", function))
                if not wait_until(lambda: admin.registered(function) == procs, 300, 0.05):
                    raise RuntimeError(f"{procs} bare workers did not register")

                def pids() -> list[int]:
                    return group.pids
            time.sleep(SETTLE)
            idle = pss_mb(pids())
            after = None
            if work is not None:
                _work(port, procs, *work)
                time.sleep(SETTLE)
                after = pss_mb(pids())
            return idle, after
    finally:
        if daemon is not None:
            daemon.stop()
        group.stop()


def run(ctx: Context) -> Section:
    sizes = (8,) if ctx.quick else (8, 16)
    jobs_per_proc, lookups = (200, 100) if ctx.quick else (1000, 100)
    freeze_ok = freeze_switch_supported()
    ways = WAYS if freeze_ok else (WAYS[0], WAYS[2])
    idle = {(w, n): Figure(f"{w}, {n} idle", "MB") for w in WAYS for n in sizes}
    after = {(w, n): Figure(f"{w}, {n} after jobs", "MB") for w in WAYS for n in sizes}
    trivial = {w: Figure(f"{w}, 8 trivial idle", "MB") for w in (WAYS[0], WAYS[2])}
    with private_gearmand(ctx.tmp) as port:
        for rep in range(ctx.reps):
            for way in trivial:
                value, _ = measure(ctx, port, way, 8, "bw_echo", None)
                trivial[way].add(value)
                progress(f"memory rep {rep + 1}/{ctx.reps}: 8 trivial, {way}: {fmt(value or 0)} MB")
            for n in sizes:
                for way in ways:
                    a, b = measure(ctx, port, way, n, "bw_big", (jobs_per_proc, lookups))
                    idle[way, n].add(a)
                    after[way, n].add(b)
                    progress(f"memory rep {rep + 1}/{ctx.reps}: {n} × 100 MB, {way}: idle "
                             f"{fmt(a or 0)} MB, after jobs {fmt(b or 0)} MB")
    return _section(ctx, sizes, idle, after, trivial, freeze_ok, jobs_per_proc, lookups)


def sep_tri_cell(figure: Figure) -> str:
    return f"{figure.cell()} MB (8 separate interpreters)"


def _section(ctx: Context, sizes: tuple[int, ...], idle: dict[tuple[str, int], Figure],
             after: dict[tuple[str, int], Figure], trivial: dict[str, Figure], freeze_ok: bool,
             jobs_per_proc: int, lookups: int) -> Section:
    section = Section("memory", "Memory: total PSS of master + workers",
                      intro="Sum of `Pss:` over every process (master and children, or each "
                            "separate interpreter), 1 s after all have registered, and again "
                            f"after each process ran about {jobs_per_proc:,} jobs that each read "
                            f"{lookups} random entries of the shared 600,000-entry dict "
                            "(bench/workers/bw_big: ~107 MB of str → (int, int) objects). "
                            "'separate interpreters' = N `python -m bench.bare_worker` processes, "
                            "each importing the module itself (the supervisord way). MB = MiB.")
    trivial_rows = [[w, trivial[w].cell()] for w in trivial]
    section.tables.append(("8 idle processes of a trivial worker (bw_echo)",
                           ["way", "total PSS (MB)"], trivial_rows))
    rows = []
    for n in sizes:
        for w in WAYS:
            if not idle[w, n].ok and "off" in w:
                rows.append([str(n), w, "n/a (driver lacks the switch)", "n/a", "n/a"])
                continue
            delta = Figure("", "MB", [b - a for a, b in zip(idle[w, n].values,
                                                            after[w, n].values, strict=False)])
            rows.append([str(n), w, idle[w, n].cell(), after[w, n].cell(), delta.cell()])
    section.tables.append(("With the 100 MB module", ["processes", "way", "idle (MB)",
                                                      "after jobs (MB)", "copied by reads (MB)"],
                           rows))
    drv, sep = WAYS[0], WAYS[2]
    tri = trivial[drv]
    big8 = idle[drv, 8]
    extra = big8.median - tri.median if big8.ok and tri.ok else None
    section.headline.append(Headline("memory, 8 idle trivial workers (driver)",
                                     tri.cell() + " MB", sep_tri_cell(trivial[WAYS[2]]),
                                     ratio(tri, trivial[WAYS[2]]), "≤ 20 MB",
                                     tri.median <= 20 if tri.ok else None))
    if tri.ok and tri.median > 20:
        section.notes.append(
            f"8 idle trivial workers take {tri.cell()} MB, not the 20 MB aimed at: the master "
            "(its code and the worker code, shared by all) is counted once, and each child "
            "adds the pages it has written since the fork; the Footprint section measures "
            "both, step by step, and says what would move them.")
    sep_tri, sep_big = trivial[sep], idle[sep, 8]
    once = (sep_big.median - sep_tri.median) / 8 if sep_big.ok and sep_tri.ok else None
    section.headline.append(Headline(
        "memory, 100 MB module at 8 processes: driver's extra over its trivial case",
        f"{fmt(extra)} MB" if extra is not None else "n/a",
        f"{fmt(once)} MB (module's cost in one separate interpreter)" if once else "n/a",
        extra / once if extra is not None and once else None, "≤ 110 MB extra",
        extra <= 110 if extra is not None else None))
    n = max(sizes)
    r = idle[drv, n].median / idle[sep, n].median if idle[drv, n].ok and idle[sep, n].ok else None
    section.headline.append(Headline(
        f"memory, {n} idle processes with 100 MB: driver / separate interpreters",
        idle[drv, n].cell() + " MB", idle[sep, n].cell() + " MB", r, "≤ 0.25",
        r <= 0.25 if r is not None else None))
    if after[drv, n].ok and after[sep, n].ok:
        r2 = after[drv, n].median / after[sep, n].median
        section.headline.append(Headline(
            f"memory, {n} processes with 100 MB after jobs: driver / separate",
            after[drv, n].cell() + " MB", after[sep, n].cell() + " MB", r2, "≤ 0.25 (same)",
            r2 <= 0.25))
    if not freeze_ok:
        section.notes.append(f"The driver does not read `{NO_FREEZE_ENV}` yet: the freeze-off "
                             "rows are n/a in this run.")
    copied = [b - a for a, b in zip(idle[drv, n].values, after[drv, n].values, strict=False)]
    if copied:
        per = sorted(copied)[len(copied) // 2] / n
        section.notes.append(
            f"Reading shared data copies pages: after the jobs each forked child holds about "
            f"{per:.1f} MB more (PSS) than idle — the pages of the ~600,000 tuples whose "
            "refcounts the lookups incremented (a page is copied on its first write; "
            f"{jobs_per_proc * lookups:,} random reads per process touch almost every 4 KiB "
            "page of the 34 MB of tuples). gc.freeze() only keeps the collector from writing the "
            "GC headers; it cannot stop refcount writes. What reduces it: keep big read-only "
            "data out of per-object refcounts — flat buffers (`array`, `bytes` + offsets, "
            "`struct`, numpy, an `mmap`ed file) read by index, or values the job does not hold "
            "a reference to (compare in C, e.g. `key in frozenset`); Python 3.12+ immortal "
            "objects (PEP 683) skip refcount writes but CPython does not make user data "
            "immortal; and recycling children (max_jobs_per_process) returns the copies "
            "periodically.")
    section.notes.append("Published peers (see Peers, measured earlier on this machine): 8 idle "
                         "workers Gearman::Driver 103 MB, GearmanManager 17 MB, supervisord + "
                         "pygearman 80 MB; with 100 MB loaded 203 / 117 / 880 MB.")
    png = ctx.plot_dir / "bench-memory.png"
    groups: dict[str, dict[str, Figure]] = {}
    for n in sizes:
        groups[f"{n} idle"] = {w: idle[w, n] for w in WAYS}
        groups[f"{n} after jobs"] = {w: after[w, n] for w in WAYS}
    if plots.bars(png, "Total PSS, 100 MB worker module", "MB", groups):
        section.plots.append((png.name, "Total PSS of all processes (median, min–max)"))
    return section


__all__ = ["run", "measure", "freeze_switch_supported", "Path"]
