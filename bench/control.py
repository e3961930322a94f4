"""Control plane: reload, stop, console and launch latencies, seen from outside the daemon.

sd_notify messages are caught on our own AF_UNIX datagram socket passed as NOTIFY_SOCKET,
each stamped on arrival; stops are timed to the master's exit; the console is asked `status`.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    Admin,
    Context,
    Figure,
    Headline,
    Section,
    driver_workers,
    fmt,
    private_gearmand,
    progress,
)
from bench.daemon import Daemon
from tests.gearmand_util import JobOutcome, TestClient, free_port
from tests.gearmand_util import wait_for as wait_until

ECHO = "bench.echo"
SLEEP = "bench.sleep"


class NotifySocket:
    """Receives sd_notify datagrams and stamps each with time.monotonic()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def wait(self, key: str, after: float, timeout: float,
             alive: Callable[[], bool] = lambda: True) -> float | None:
        """Pump until a message with `key` arrived at or after `after`; its stamp, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            stamp = self.first(key, after)
            if stamp is not None:
                return stamp
            self.pump(0.05)
        return self.first(key, after)

    def first(self, key: str, after: float) -> float | None:
        for stamp, text in self.messages:
            if stamp >= after and key in text.splitlines():
                return stamp
        return None

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def reload_latency(ctx: Context, port: int) -> tuple[Figure, Figure]:
    """SIGHUP → READY=1 (after RELOADING=1) with 50 jobs; and launch → first READY=1."""
    reload = Figure("SIGHUP → READY=1, 50 jobs", "s")
    ready = Figure("launch → READY=1, 50 jobs", "s")
    notify = NotifySocket(ctx.tmp / "notify.sock")
    jobs = {f"bench.many.j{i:02d}": (1, 1) for i in range(50)}
    daemon = Daemon(ctx.tmp / "control", port, "bw_many", name="reload", jobs=jobs,
                    env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        with Admin(port) as admin:
            daemon.start()
            while driver_workers(admin, daemon.pid) < 50:
                daemon.check()
                notify.pump(0.1)
                if time.monotonic() - daemon.started_at > 120:
                    return reload, ready
        notify.pump(0.5)
        first = notify.first("READY=1", daemon.started_at)
        ready.add(first - daemon.started_at if first else None)
        for _ in range(ctx.reps):
            sent = time.monotonic()
            daemon.signal(signal.SIGHUP)
            notify.pump(0.2)
            reloading = notify.first("RELOADING=1", sent)
            done = notify.first("READY=1", reloading) if reloading else None
            if reloading is None:
                notify.pump(2.0)
                reloading = notify.first("RELOADING=1", sent)
                done = notify.first("READY=1", reloading) if reloading else None
            reload.add(done - sent if done else None)
            time.sleep(0.3)
    finally:
        daemon.stop()
        notify.close()
    return reload, ready


def sigterm_idle(ctx: Context, port: int, n: int, backend: str) -> float | None:
    daemon = Daemon(ctx.tmp / "control", port, "bw_echo", name=f"term{n}",
                    jobs={ECHO: (n, n)}, worker_backend=backend)
    try:
        with Admin(port) as admin:
            daemon.start()
            if not wait_until(lambda: admin.registered(ECHO, daemon.pid) == n, 60, 0.05):
                daemon.check()
                return None
        time.sleep(0.5)
        assert daemon.proc is not None
        t0 = time.monotonic()
        daemon.signal(signal.SIGTERM)
        daemon.proc.wait(60)
        return time.monotonic() - t0
    finally:
        daemon.stop()


def sigterm_busy(ctx: Context, port: int, backend: str) -> tuple[int, float | None]:
    """8 processes each in a 3 s foreground job; SIGTERM; (jobs completed, exit time)."""
    daemon = Daemon(ctx.tmp / "control", port, "bw_sleep", name="busy", jobs={SLEEP: (8, 8)},
                    worker_backend=backend)
    outcomes: list[JobOutcome | None] = [None] * 8

    def client(i: int) -> None:
        try:
            with TestClient(port, timeout=30) as c:
                outcomes[i] = c.submit(SLEEP, b"3000")
        except (OSError, RuntimeError):
            outcomes[i] = None

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
    try:
        with Admin(port) as admin:
            daemon.start()
            if not wait_until(lambda: admin.registered(SLEEP, daemon.pid) == 8, 60, 0.05):
                daemon.check()
                return 0, None
            for t in threads:
                t.start()
            wait_until(lambda: admin.status().get(SLEEP, (0, 0, 0))[1] == 8, 10, 0.01)
        assert daemon.proc is not None
        t0 = time.monotonic()
        daemon.signal(signal.SIGTERM)
        daemon.proc.wait(60)
        elapsed = time.monotonic() - t0
        for t in threads:
            t.join(30)
        done = sum(1 for o in outcomes if o is not None and o.final == "complete")
        return done, elapsed
    finally:
        daemon.stop()


def status_round_trips(console: int, samples: int, figure: Figure) -> Figure:
    """`samples` console `status` round trips on one connection, in ms, added to `figure`."""
    with socket.create_connection(("127.0.0.1", console), timeout=10) as sock:
        reader = sock.makefile("rb")
        for _ in range(samples):
            t0 = time.perf_counter()
            sock.sendall(b"status\n")
            while reader.readline().rstrip(b"\r\n") != b".":
                pass
            figure.add(1000 * (time.perf_counter() - t0))
            time.sleep(0.02)
    return figure


def console_rtt(ctx: Context, port: int, samples: int) -> Figure:
    """`status` round trips on the console while 16 processes are in 2 s jobs."""
    figure = Figure("console `status` round trip, 16 busy", "ms")
    console = free_port()
    daemon = Daemon(ctx.tmp / "control", port, "bw_sleep", name="console",
                    jobs={SLEEP: (16, 16)}, console_port=console)
    try:
        with Admin(port) as admin:
            daemon.start()
            if not wait_until(lambda: admin.registered(SLEEP, daemon.pid) == 16, 60, 0.05):
                daemon.check()
                return figure
            with TestClient(port) as c:
                c.submit_many_bg(SLEEP, [b"2000"] * 64)
            wait_until(lambda: admin.status().get(SLEEP, (0, 0, 0))[1] == 16, 10, 0.01)
        return status_round_trips(console, samples, figure)
    finally:
        daemon.stop()


def launch_to_job(ctx: Context, port: int, backend: str) -> float | None:
    """A foreground job queued before launch: Popen → its WORK_COMPLETE at the client."""
    result: list[float] = []

    def client() -> None:
        with TestClient(port, timeout=60) as c:
            if c.submit(ECHO, b"first").final == "complete":
                result.append(time.monotonic())

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    with Admin(port) as admin:
        wait_until(lambda: admin.queued(ECHO) == 1, 5, 0.005)
    daemon = Daemon(ctx.tmp / "control", port, "bw_echo", name="launch", jobs={ECHO: (1, 1)},
                    worker_backend=backend)
    try:
        daemon.start()
        thread.join(60)
        return result[0] - daemon.started_at if result else None
    finally:
        daemon.stop()


def run(ctx: Context) -> Section:
    backends = ("pygearman", "native")
    sizes = (8,) if ctx.quick else (8, 32)
    term = {(n, b): Figure(f"SIGTERM → exit, {n} idle, {b}", "s") for n in sizes for b in backends}
    busy_done = Figure("jobs completed of 8", "")
    busy_exit = Figure("SIGTERM → exit, 8 busy in 3 s jobs", "s")
    launch = {b: Figure(f"launch → first job done, {b}", "s") for b in backends}
    with private_gearmand(ctx.tmp) as port:
        reload, ready = reload_latency(ctx, port)
        progress(f"control: SIGHUP → READY=1 {reload.cell()} s; launch → READY=1 {ready.cell()} s")
        for rep in range(ctx.reps):
            for n in sizes:
                for b in backends:
                    term[n, b].add(sigterm_idle(ctx, port, n, b))
            for b in backends:
                launch[b].add(launch_to_job(ctx, port, b))
            done, elapsed = sigterm_busy(ctx, port, "pygearman")
            busy_done.add(done)
            busy_exit.add(elapsed)
            progress(f"control rep {rep + 1}/{ctx.reps}: SIGTERM idle "
                     + ", ".join(f"{k[0]}/{k[1]} {fmt(v.values[-1]) if v.ok else 'n/a'} s"
                                 for k, v in term.items())
                     + f"; busy: {done}/8 completed, exit {fmt(elapsed or 0)} s; launch "
                     + ", ".join(f"{b} {fmt(v.values[-1]) if v.ok else 'n/a'} s"
                                 for b, v in launch.items()))
        rtt = console_rtt(ctx, port, 10 if ctx.quick else 30)
        progress(f"control: console status round trip {rtt.cell()} ms")
    return _section(ctx, sizes, backends, reload, ready, term, busy_done, busy_exit, rtt, launch)


def _section(ctx: Context, sizes: tuple[int, ...], backends: tuple[str, ...], reload: Figure,
             ready: Figure, term: dict[tuple[int, str], Figure], busy_done: Figure,
             busy_exit: Figure, rtt: Figure, launch: dict[str, Figure]) -> Section:
    section = Section("control", "Control plane: reload, stop, console, launch",
                      intro=f"Median of {ctx.reps} (min–max). sd_notify datagrams are caught on "
                            "a socket of ours passed as NOTIFY_SOCKET. Stops are timed from the "
                            "signal to the master's exit (its children are gone by then).")
    rows = [["SIGHUP → READY=1 (after RELOADING=1), 50 jobs", reload.cell() + " s"],
            ["launch → READY=1, 50 jobs (50 processes)", ready.cell() + " s"]]
    rows += [[f"SIGTERM → exit, {n} idle processes, {b} backend", term[n, b].cell() + " s"]
             for n in sizes for b in backends]
    rows += [["SIGTERM during 3 s jobs, 8 busy: jobs completed at the clients",
              busy_done.cell() + " of 8"],
             ["SIGTERM during 3 s jobs, 8 busy: exit after", busy_exit.cell() + " s"],
             ["console `status` round trip, 16 processes busy", rtt.cell() + " ms"]]
    rows += [[f"launch → first (pre-queued) job completed, {b} backend", launch[b].cell() + " s"]
             for b in backends]
    section.tables.append(("", ["figure", "value"], rows))
    if not reload.ok:
        section.notes.append("SIGHUP → READY=1 is n/a: no RELOADING=1/READY=1 pair arrived on "
                             "NOTIFY_SOCKET in this run.")
    for n in sizes:
        f = term[n, "pygearman"]
        section.headline.append(Headline(
            f"SIGTERM → exit, {n} idle (pygearman backend)", f.cell() + " s",
            "0.02 s (Gearman::Driver, pub.)", f.median / 0.02 if f.ok else None, "≤ 0.1 s",
            f.median <= 0.1 if f.ok else None))
        g = term[n, "native"]
        section.headline.append(Headline(
            f"SIGTERM → exit, {n} idle (native backend)", g.cell() + " s",
            "0.02 s (Gearman::Driver, pub.)", g.median / 0.02 if g.ok else None, "≤ 0.1 s",
            g.median <= 0.1 if g.ok else None))
    section.headline.append(Headline(
        "SIGTERM during 3 s jobs: jobs completed", busy_done.cell() + " of 8", "—", None,
        "8 of 8", busy_done.lo == 8 if busy_done.ok else None))
    for b in backends:
        f = launch[b]
        section.headline.append(Headline(
            f"launch → first job taken ({b})", f.cell() + " s", "0.41 s (Gearman::Driver, pub.)",
            f.median / 0.41 if f.ok else None, "≤ 0.25 s", f.median <= 0.25 if f.ok else None))
    section.headline.append(Headline("SIGHUP → READY=1, 50 jobs", reload.cell() + " s", "—",
                                     None, "—", None))
    section.notes.append("Published peers (see Peers): launch → first job Gearman::Driver 0.41 s, "
                         "GearmanManager 0.02 s, supervisord 1.10 s; SIGTERM with 8 idle workers "
                         "0.02 s / 60 s / 0.9 s; during a 3 s job GearmanManager lets it complete, "
                         "the others kill and re-queue it.")
    return section
