"""Network: what `keepalive` buys and costs, and what a silent server costs (issue 22).

gearmand runs on hosts made of network namespaces (tests/network/netlab.py: 198.18.i.2 behind
a veth pair; the daemon in a namespace of its own), so a peer can vanish as on a real network.
Needs root, as the network test tier does.

- dead peer → registered again: a hard reboot of the gearmand host under an idle worker (link
  down, gearmand SIGKILLed, the host's TCP state gone, a fresh gearmand, link up), with the
  host off the network for 0 or 10 s; the time until gearmand lists the process again, from
  the reboot and from the host's return, for `keepalive` 1, 2 and 5 (and 0: not within the
  wait);
- keepalive's cost: N idle processes on one server (interval 0, so the master polls nothing),
  packets on the driver's link and the CPU of the children and of gearmand over a window,
  against keepalive 0;
- a burst on one of two servers while the other is silent, against the same burst with both
  up: drain time and the most processes the healthy server listed, on both backends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import Context, Figure, Headline, Section, fmt, progress
from bench.daemon import Daemon
from tests.driver_util import cpu_seconds
from tests.gearmand_util import wait_for as wait_until
from tests.network.netlab import Host, Lab, clean_stale

ECHO = "bench.echo"
SLEEP = "bench.sleep"
BACKENDS = ("native", "pygearman")
CONSOLE_PORT = 47300  # in the driver's namespace
NO_KEEPALIVE_WAIT = 20.0


@contextmanager
def lab_with(tmp: Path, hosts: int, gearmand: int | None = None) -> Iterator[Lab]:
    """A lab whose first `gearmand` hosts (default: all) run gearmand; deleted afterwards."""
    lab = Lab(tmp, hosts)
    try:
        lab.create()
        for host in lab.hosts[:gearmand]:
            host.start_gearmand()
        yield lab
    finally:
        lab.destroy()


def daemon_in(lab: Lab, tmp: Path, namespace: str, name: str, hosts: list[Host],
              **settings: Any) -> Daemon:
    daemon = Daemon(tmp, 0, namespace, name=name, server=",".join(h.server for h in hosts),
                    **settings)
    daemon.wrapper = ["ip", "netns", "exec", lab.driver_ns]
    return daemon


def dead_peer(tmp: Path, backend: str, keepalive: float, down_for: float,
              wait: float = NO_KEEPALIVE_WAIT) -> tuple[float | None, float | None]:
    """(reboot → registered again, host back → registered again) in seconds; None when the
    worker was not registered again within the wait (`wait` for keepalive 0)."""
    with lab_with(tmp, 1) as lab:
        host = lab.hosts[0]
        daemon = daemon_in(lab, tmp, "bw_echo", f"peer-{backend}-{keepalive:g}", [host],
                           jobs={ECHO: (1, 1)}, keepalive=keepalive, worker_backend=backend)
        try:
            daemon.start()
            if not wait_until(lambda: host.our_processes(daemon.pid) == 1, 30, 0.05):
                daemon.check()
                return None, None
            wait_until(lambda: lab.quiet(host), 10, 0.05)  # idle: nothing unacknowledged
            rebooted = time.monotonic()
            host.reboot(down_for)
            back = time.monotonic()
            limit = wait if keepalive == 0 else 3 * keepalive + 30
            if not wait_until(lambda: host.our_processes(daemon.pid) == 1, limit, 0.02):
                return None, None
            done = time.monotonic()
            return done - rebooted, done - back
        finally:
            daemon.stop()


def idle_cost(tmp: Path, processes: int, keepalive: float, window: float
              ) -> tuple[float, float, float] | None:
    """(packets/s on the link, children's CPU in % of a core, gearmand's CPU in %) with
    `processes` idle processes; None if they never all registered."""
    with lab_with(tmp, 1) as lab:
        host = lab.hosts[0]
        daemon = daemon_in(lab, tmp, "bw_echo", f"cost-{keepalive:g}", [host],
                           jobs={ECHO: (processes, processes)}, keepalive=keepalive,
                           interval=0)
        try:
            daemon.start()
            if not wait_until(lambda: host.our_processes(daemon.pid) == processes, 300, 0.5):
                daemon.check()
                return None
            time.sleep(keepalive + 1)  # past the first idle period: probing at its pace
            kids = daemon.children()
            assert host.gearmand is not None
            gearmand = host.gearmand.pid
            packets, cpu, g_cpu, t0 = (lab.packets(host), sum(map(cpu_seconds, kids)),
                                       cpu_seconds(gearmand), time.monotonic())
            time.sleep(window)
            elapsed = time.monotonic() - t0
            return ((lab.packets(host) - packets) / elapsed,
                    100 * (sum(map(cpu_seconds, kids)) - cpu) / elapsed,
                    100 * (cpu_seconds(gearmand) - g_cpu) / elapsed)
        finally:
            daemon.stop()


def burst_drain(tmp: Path, backend: str, silent: bool, jobs: int
                ) -> tuple[float | None, int]:
    """A burst of `jobs` × 10 ms on the first of two servers, the second silent (link down)
    or not: (seconds until gearmand's queue was empty, the most of our processes it listed)."""
    with lab_with(tmp, 2) as lab:
        one, two = lab.hosts
        daemon = daemon_in(lab, tmp, "bw_sleep", f"drain-{backend}-{silent}", [one, two],
                           jobs={SLEEP: (1, 8)}, keepalive=2, max_idle_time=0,
                           worker_backend=backend, console_port=CONSOLE_PORT)
        try:
            daemon.start()
            if not wait_until(lambda: one.our_processes(daemon.pid) == 1 ==
                              two.our_processes(daemon.pid), 30, 0.05):
                daemon.check()
                return None, 0
            if silent:
                two.link_down()
                seen = wait_until(lambda: lab.console("servers", CONSOLE_PORT)[1].split()[1]
                                  == "down", 15, 0.1)
                if not seen:
                    return None, 0
            started = time.monotonic()
            with one.client() as client:
                client.submit_many_bg(SLEEP, [b"10"] * jobs)
            peak = 0

            def drained() -> bool:
                nonlocal peak
                peak = max(peak, one.our_processes(daemon.pid))
                return one.admin("status")[0].split("\t")[1] == "0"

            if not wait_until(drained, 120, 0.02):
                return None, peak
            return time.monotonic() - started, peak
        finally:
            daemon.stop()


def run(ctx: Context) -> Section:
    clean_stale()
    keepalives = (2.0,) if ctx.quick else (1.0, 2.0, 5.0)
    outages = (0.0,) if ctx.quick else (0.0, 10.0)
    peer: dict[tuple[str, float, float], tuple[Figure, Figure]] = {}
    for backend in BACKENDS:
        for keepalive in keepalives:
            for down_for in outages:
                if down_for and keepalive != 2.0:
                    continue
                key = (backend, keepalive, down_for)
                peer[key] = (Figure("reboot → registered", "s"),
                             Figure("host back → registered", "s"))
                for _ in range(ctx.reps):
                    total, after = dead_peer(ctx.tmp, backend, keepalive, down_for)
                    peer[key][0].add(total)
                    peer[key][1].add(after)
                progress(f"network: dead peer, {backend}, keepalive {keepalive:g}, down "
                         f"{down_for:g}s: {peer[key][0].cell()} s")
    wait = 8.0 if ctx.quick else NO_KEEPALIVE_WAIT
    stranded = {backend: dead_peer(ctx.tmp, backend, 0, 0.0, wait)[0]
                for backend in (BACKENDS[:1] if ctx.quick else BACKENDS)}
    progress(f"network: keepalive 0: {stranded}")

    processes, window = (50, 4.0) if ctx.quick else (500, 12.0)
    cost_keepalives = (0.0, 2.0) if ctx.quick else (0.0, 1.0, 5.0)
    cost = {keepalive: idle_cost(ctx.tmp, processes, keepalive, window)
            for keepalive in cost_keepalives}
    progress(f"network: keepalive cost, {processes} idle processes: {cost}")

    jobs = 400 if ctx.quick else 2000
    drain: dict[tuple[str, bool], Figure] = {}
    peaks: dict[tuple[str, bool], int] = {}
    for backend in BACKENDS:
        for silent in (False, True):
            figure = drain[(backend, silent)] = Figure("drain", "s")
            for _ in range(ctx.reps):
                seconds, peak = burst_drain(ctx.tmp, backend, silent, jobs)
                figure.add(seconds)
                peaks[(backend, silent)] = max(peaks.get((backend, silent), 0), peak)
            progress(f"network: drain, {backend}, {'one silent' if silent else 'both up'}: "
                     f"{figure.cell()} s, peak {peaks[(backend, silent)]}")
    return _section(ctx, peer, (stranded, wait), processes, window, cost, jobs, drain, peaks)


def _section(ctx: Context, peer: dict[tuple[str, float, float], tuple[Figure, Figure]],
             no_keepalive: tuple[dict[str, float | None], float], processes: int,
             window: float,
             cost: dict[float, tuple[float, float, float] | None], jobs: int,
             drain: dict[tuple[str, bool], Figure],
             peaks: dict[tuple[str, bool], int]) -> Section:
    section = Section(
        "network", "Network: dead peers, keepalive's cost, a silent server",
        intro="gearmand on hosts made of network namespaces and veth pairs (198.18.0.0/15, "
              "see tests/network/netlab.py); the daemon in a namespace of its own. "
              f"Median of {ctx.reps} (min–max).")
    rows = [[backend, f"{keepalive:g}", f"{down_for:g}", total.cell(), after.cell()]
            for (backend, keepalive, down_for), (total, after) in peer.items()]
    stranded, wait = no_keepalive
    rows += [[backend, "0", "0", "not within " + fmt(wait) if seconds is None
              else fmt(seconds), "–"] for backend, seconds in stranded.items()]
    section.tables.append((
        "Dead peer → worker registered again (a hard reboot of the gearmand host under an "
        "idle worker)",
        ["backend", "keepalive (s)", "host off for (s)", "from the reboot (s)",
         "from the host's return (s)"], rows))
    baseline = cost.get(0.0)
    cost_rows = []
    for keepalive, figures in cost.items():
        if figures is None:
            cost_rows.append([f"{keepalive:g}", "n/a", "n/a", "n/a", "n/a"])
            continue
        packets, kids, gearmand = figures
        extra = packets - baseline[0] if baseline else packets
        per_minute = 60 * extra / processes
        cost_rows.append([f"{keepalive:g}", fmt(packets), fmt(per_minute), fmt(kids),
                          fmt(gearmand)])
    section.tables.append((
        f"Keepalive's cost: {processes} idle processes on one server, {window:g} s window, "
        "interval 0",
        ["keepalive (s)", "packets/s on the link", "per process per minute, beyond "
         "keepalive 0", "children's CPU (% of a core)", "gearmand's CPU (%)"], cost_rows))
    section.notes.append(
        "An answered probe resets the connection's idle clock, so an idle connection costs "
        "one probe and its answer every `keepalive` seconds: at the default 60 s, "
        f"{processes} idle processes send and receive about {2 * processes / 60:.0f} "
        "packets/s. The probes are the kernel's timers: no process wakes for them (the "
        "children's CPU is that of idle processes).")
    drain_rows = []
    for backend in BACKENDS:
        up, silent = drain[(backend, False)], drain[(backend, True)]
        ratio = silent.median / up.median if up.ok and silent.ok else None
        drain_rows.append([backend, up.cell(), silent.cell(),
                           "n/a" if ratio is None else f"{ratio:.2f}",
                           f"{peaks[(backend, False)]} / {peaks[(backend, True)]}"])
        section.headline.append(Headline(
            f"burst drain, one of two servers silent / none ({backend})",
            f"{silent.cell()} s", f"{up.cell()} s", ratio, "≤ 1.2",
            ratio <= 1.2 if ratio is not None else None))
    section.tables.append((
        f"A burst of {jobs:,} × 10 ms on one of two servers (max 8 processes, keepalive 2)",
        ["backend", "both up (s)", "the other silent (s)", "ratio", "most processes "
         "(both up / silent)"], drain_rows))
    for backend in BACKENDS:
        total = peer.get((backend, 2.0, 0.0), (Figure("", ""),))[0]
        if total.values:
            section.headline.append(Headline(
                f"dead peer → registered again, keepalive 2 ({backend})", total.cell() + " s",
                "never (keepalive 0)", None, "≤ 20 s", total.median <= 20))
    return section
