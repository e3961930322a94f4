"""Many jobs in flight per process: I/O-bound jobs through processes, async slots and threads.

2,000 jobs (400 with --quick), each waiting 0.5 s on a real local socket (bench/delay_server.py
answers each connection that long after its request), submitted as background jobs at once to
one of three set-ups of the same daemon (bench/workers/bw_io), their processes started before
the burst (min = max: the engine is measured here, the scaler in the scale benchmark):

- (a) concurrency 1, 64 processes: a process per job in flight, as before slots;
- (b) `async def` with concurrency 200, 4 processes (800 slots);
- (c) a plain method with concurrency 50 (threads), 4 processes (200 slots).

Completion time (from the burst until gearmand's queue is empty) against the ideal, which is
the jobs in whole rounds of the slots times 0.5 s; the PSS of the daemon's tree (master and
children) idle and at its peak during the burst (sampled every 0.1 s); jobs in flight per MB.
Then what 200 jobs in flight cost one process (its PSS with 200 in flight less its PSS idle),
and a trickle: 300 trivial foreground jobs one after another to a plain job of one process, to
an async job of one slot, to one of 200 idle slots (one process, one connection: gearmand wakes
it once per job), and to a plain job of 200 processes (200 sleeping connections, which
gearmand all wakes for every job: the cost of one connection per slot).
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.common import (
    PYTHON,
    ROOT,
    Context,
    Figure,
    Headline,
    Section,
    fmt,
    private_gearmand,
    progress,
    pss_mb,
    stop_all,
)
from bench.daemon import Daemon
from tests.gearmand_util import TestClient, free_port, status_table, wait_for

SECONDS = 0.5
IO_JOBS = ("bench.io_process", "bench.io_thread", "bench.io_async")
TRIVIAL = ("bench.trivial_plain", "bench.trivial_one_slot", "bench.trivial_200_slots",
           "bench.trivial_herd")
HERD = 200  # processes of one slot each (50 with --quick): the design slots avoid
SETUPS = (  # key, what, job, processes, slots per process
    ("a", "processes: concurrency 1, 64 processes", "bench.io_process", 64, 1),
    ("b", "async: concurrency 200, 4 processes", "bench.io_async", 4, 200),
    ("c", "threads: concurrency 50, 4 processes", "bench.io_thread", 4, 50),
)


@contextmanager
def delay_server() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-m", "bench.delay_server", "--port", str(port)],
                            cwd=str(ROOT), stdin=subprocess.DEVNULL)
    try:
        import socket

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False

        if not wait_for(listening, 10):
            raise RuntimeError("the delay server did not start")
        yield port
    finally:
        stop_all([proc])


def _daemon(ctx: Context, gearmand: int, delay: int, job: str, processes: int,
            name: str) -> Daemon:
    limits = {other: (0, 0) for other in IO_JOBS + TRIVIAL}
    limits[job] = (processes, processes)
    return Daemon(ctx.tmp / "slots", gearmand, "bw_io", name=name, jobs=limits,
                  env={"BW_DELAY_PORT": str(delay)}, interval=1)


def _tree(daemon: Daemon) -> list[int]:
    return [daemon.pid, *daemon.children()]


def _registered(gearmand: int, job: str, count: int) -> bool:
    return status_table(gearmand).get(job, (0, 0, 0))[2] >= count


def _drained(gearmand: int, job: str) -> bool:
    return status_table(gearmand).get(job, (1, 0, 0))[0] == 0


def burst(ctx: Context, gearmand: int, delay: int, setup: tuple[str, str, str, int, int],
          jobs: int) -> tuple[float, float, float, float | None]:
    """(seconds to drain, tree PSS idle, tree PSS peak, one process's PSS added by its
    slots in flight) for one set-up."""
    key, _, job, processes, slots = setup
    with _daemon(ctx, gearmand, delay, job, processes, f"slots-{key}") as daemon:
        if not wait_for(lambda: _registered(gearmand, job, processes), 60, 0.05):
            daemon.check()
            raise RuntimeError(f"{job}: {processes} processes not registered")
        time.sleep(0.5)  # let the freshly forked processes settle before the idle figure
        idle = pss_mb(_tree(daemon))
        one = daemon.children()[0]
        one_idle = pss_mb([one])
        with TestClient(gearmand) as client:
            started = time.monotonic()
            client.submit_many_bg(job, [str(SECONDS).encode()] * jobs)
        peak = one_peak = 0.0
        while not _drained(gearmand, job):
            peak = max(peak, pss_mb(_tree(daemon)))
            one_peak = max(one_peak, pss_mb([one]))
            time.sleep(0.1)
        took = time.monotonic() - started
    added = one_peak - one_idle if slots > 1 else None
    return took, idle, max(peak, idle), added


def trickle(ctx: Context, gearmand: int, delay: int, count: int) -> dict[str, float]:
    """Seconds for `count` trivial foreground jobs one after another, per job of TRIVIAL."""
    limits = {other: (0, 0) for other in IO_JOBS}
    limits.update({job: (1, 1) for job in TRIVIAL})
    herd = 50 if ctx.quick else HERD
    limits["bench.trivial_herd"] = (herd, herd)
    took: dict[str, float] = {}
    with Daemon(ctx.tmp / "slots", gearmand, "bw_io", name="slots-trickle", jobs=limits,
                env={"BW_DELAY_PORT": str(delay)}) as daemon:
        for job in TRIVIAL:
            want = limits[job][0]
            if not wait_for(lambda j=job, n=want: _registered(gearmand, j, n), 120, 0.05):
                daemon.check()
        with TestClient(gearmand) as client:
            for job in TRIVIAL:
                client.submit(job, b"warm")
                started = time.monotonic()
                for i in range(count):
                    client.submit(job, b"%d" % i)
                took[job] = time.monotonic() - started
    return took


def run(ctx: Context) -> Section:
    jobs = 400 if ctx.quick else 2000
    section = Section("slots", "Slots: many I/O-bound jobs in flight per process", __doc__ or "")
    rows: list[list[str]] = []
    figures: dict[str, dict[str, Figure]] = {}
    with private_gearmand(ctx.tmp / "slots-gearmand") as gearmand, delay_server() as delay:
        for setup in SETUPS:
            key, what, job, processes, slots = setup
            ideal = math.ceil(jobs / (processes * slots)) * SECONDS
            f = figures[key] = {name: Figure(name, unit) for name, unit in (
                ("took", "s"), ("idle", "MB"), ("peak", "MB"), ("added", "MB"))}
            for rep in range(ctx.reps):
                progress(f"slots {key} ({what}), run {rep + 1}/{ctx.reps}")
                took, idle, peak, added = burst(ctx, gearmand, delay, setup, jobs)
                f["took"].add(took)
                f["idle"].add(idle)
                f["peak"].add(peak)
                f["added"].add(added)
            in_flight = processes * slots
            rows.append([f"({key}) {what}", fmt(ideal), f["took"].cell(),
                         f"{f['took'].median / ideal:.2f}", f["idle"].cell(), f["peak"].cell(),
                         fmt(in_flight / f["peak"].median) if f["peak"].ok else "n/a",
                         f["added"].cell() if f["added"].ok else "—"])
        count = 100 if ctx.quick else 300
        progress(f"slots: {count} trivial jobs one after another")
        trickles: dict[str, Figure] = {job: Figure(job, "s") for job in TRIVIAL}
        for _ in range(ctx.reps):
            for job, seconds in trickle(ctx, gearmand, delay, count).items():
                trickles[job].add(seconds)
    section.tables.append((
        f"{jobs} jobs of {SECONDS} s of I/O each (median of {ctx.reps}, min–max)",
        ["set-up", "ideal (s)", "took (s)", "× ideal", "tree PSS idle (MB)",
         "tree PSS peak (MB)", "jobs in flight per MB", "one process: PSS added by its slots "
                                                      "in flight (MB)"],
        rows))
    section.tables.append((
        f"{count} trivial foreground jobs one after another (median of {ctx.reps}, min–max)",
        ["job", "seconds"], [[job, trickles[job].cell()] for job in TRIVIAL]))
    a, b = figures["a"], figures["b"]
    ideal_b = math.ceil(jobs / 800) * SECONDS
    if b["took"].ok:
        section.headline.append(Headline(
            "async slots (b): time against the ideal", f"{fmt(b['took'].median)} s",
            f"{fmt(ideal_b)} s ideal", b["took"].median / ideal_b, "≤ 1.2×",
            b["took"].median <= 1.2 * ideal_b))
    if a["peak"].ok and b["peak"].ok:
        section.headline.append(Headline(
            "async slots (b): tree PSS at peak against processes (a)",
            f"{fmt(b['peak'].median)} MB", f"{fmt(a['peak'].median)} MB",
            b["peak"].median / a["peak"].median, "≤ 0.1×",
            b["peak"].median <= 0.1 * a["peak"].median))
    if b["added"].ok:
        section.headline.append(Headline(
            "200 async jobs in flight: PSS they add to one process",
            f"{fmt(b['added'].median)} MB", "—", None, "≤ 16 MB", b["added"].median <= 16))
    one, many = trickles["bench.trivial_one_slot"], trickles["bench.trivial_200_slots"]
    if one.ok and many.ok:
        section.headline.append(Headline(
            f"{count} trivial jobs in a row: 200 idle slots against one",
            f"{fmt(many.median)} s", f"{fmt(one.median)} s", many.median / one.median,
            "≤ 2× + 0.5 s", many.median <= 2 * one.median + 0.5))
    return section
