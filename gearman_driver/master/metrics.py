"""Prometheus metrics of the master: a collector read at scrape time, and its exposition.

Nothing is counted here: the job table, the scoreboard (the children's counters), the
observer's last snapshot and a few counters of the master already hold every figure, and the
collector turns them into metric families only when Prometheus asks. prometheus_client's
registry and exposition code write the text (or OpenMetrics) format, so this module owns names,
labels and help texts, not formatting. Imported only when ``metrics_port`` is set.
"""

from __future__ import annotations

import os
import selectors
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from gearman_driver.jobs.table import Job
from gearman_driver.master.metrics_http import MetricsServer
from gearman_driver.master.observer import Snapshot
from gearman_driver.master.processes import RECYCLED_FOR
from gearman_driver.scoreboard import DURATION_BUCKETS, MAX_FUNCTIONS, Counters, Scoreboard
from gearman_driver.version import __version__

__all__ = ["DriverCollector", "MetricsSource", "exposition", "make_registry",
           "open_endpoint"]

_BOUNDS = tuple(f"{bound:g}" for bound in DURATION_BUCKETS) + ("+Inf",)
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class MetricsSource:
    """Where the collector reads from; the driver passes its own live objects and getters."""

    jobs: Mapping[str, Job]
    scoreboard: Callable[[], Scoreboard | None]
    snapshot: Callable[[], Snapshot | None]
    backend: Callable[[], str]
    reloads: Mapping[str, int]  # "ok"/"failed" -> count
    loop_lag: Callable[[], float]


class DriverCollector(Collector):
    """Yields the gearman_driver_* families from the master's state at scrape time."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        source = self.source
        board = source.scoreboard()
        yield from self._jobs(source.jobs, board)
        yield from self._gearmand(source.snapshot())
        reloads = CounterMetricFamily("gearman_driver_reloads_total",
                                      "Reloads (SIGHUP, reload command) by result: ok, or "
                                      "failed (refused)", labels=["result"])
        for result in ("ok", "failed"):
            reloads.add_metric([result], source.reloads.get(result, 0))
        yield reloads
        yield GaugeMetricFamily("gearman_driver_loop_lag_seconds",
                                "How late the master's loop turns were (worst of the last "
                                "10 to 20 s)",
                                value=source.loop_lag())
        info = GaugeMetricFamily("gearman_driver_build_info", "Version and default worker backend",
                                 labels=["version", "backend"])
        info.add_metric([__version__, source.backend()], 1)
        yield info
        pids = [os.getpid()] + [pid for job in source.jobs.values() for pid in job.processes]
        yield GaugeMetricFamily("gearman_driver_memory_rss_bytes",
                                "Resident memory of the master and all its children, summed "
                                "(pages shared copy-on-write count once per process)",
                                value=sum(_rss(pid) for pid in pids))

    def _jobs(self, jobs: Mapping[str, Job], board: Scoreboard | None) -> Iterator[Metric]:
        label = ["job_name"]
        processes = GaugeMetricFamily("gearman_driver_processes", "Processes of the job",
                                      labels=label)
        busy = GaugeMetricFamily("gearman_driver_processes_busy",
                                 "Processes of the job running a job now", labels=label)
        low = GaugeMetricFamily("gearman_driver_min_processes", "The job's min_processes",
                                labels=label)
        high = GaugeMetricFamily("gearman_driver_max_processes", "The job's max_processes",
                                 labels=label)
        done = CounterMetricFamily("gearman_driver_jobs_total",
                                   "Jobs finished, by function and result (complete, failed)",
                                   labels=["job_name", "function", "result"])
        durations = HistogramMetricFamily("gearman_driver_job_duration_seconds",
                                          "How long the job's jobs ran", labels=label)
        starts = CounterMetricFamily("gearman_driver_process_starts_total",
                                     "Processes started for the job", labels=label)
        failed = CounterMetricFamily("gearman_driver_failed_starts_total",
                                     "Process deaths counted as failed starts (the next start "
                                     "backs off)", labels=label)
        timeouts = CounterMetricFamily("gearman_driver_job_timeouts_total",
                                       "Processes killed for running a job past its timeout",
                                       labels=label)
        recycled = CounterMetricFamily("gearman_driver_recycled_total",
                                       "Processes replaced, by reason",
                                       labels=["job_name", "reason"])
        for name, job in jobs.items():
            totals = Counters(job.counters.values)
            n_busy = 0
            if board is not None:
                for process in job.processes.values():
                    n_busy += board.busy(process.slot)
                    totals.add(board.counters(process.slot))
            processes.add_metric([name], len(job.processes))
            busy.add_metric([name], n_busy)
            low.add_metric([name], job.min_processes)
            high.add_metric([name], job.max_processes)
            for function, complete, failures in function_outcomes(job.spec.functions, totals):
                done.add_metric([name, function, "complete"], complete)
                done.add_metric([name, function, "failed"], failures)
            durations.add_metric([name], histogram_buckets(totals.buckets), totals.duration_sum)
            starts.add_metric([name], job.starts_total)
            failed.add_metric([name], job.failed_starts_total)
            timeouts.add_metric([name], job.timeouts_total)
            for reason in RECYCLED_FOR:  # from zero, so that rate() sees the first
                recycled.add_metric([name, reason], job.recycled_total.get(reason, 0))
        yield from (processes, busy, low, high, done, durations, starts, failed, timeouts,
                    recycled)

    @staticmethod
    def _gearmand(snapshot: Snapshot | None) -> Iterator[Metric]:
        waiting = GaugeMetricFamily("gearman_driver_gearmand_jobs_waiting",
                                    "Jobs queued in gearmand and not yet running, summed over "
                                    "the servers that answered", labels=["function"])
        up = GaugeMetricFamily("gearman_driver_gearmand_up",
                               "Whether the server answered the last poll", labels=["server"])
        age = GaugeMetricFamily("gearman_driver_gearmand_scrape_age_seconds",
                                "Seconds since the last poll of gearmand began")
        if snapshot is not None:
            for name in sorted(snapshot.functions):
                waiting.add_metric([name], snapshot.functions[name].waiting)
            for servers, value in ((snapshot.servers_up, 1), (snapshot.servers_down, 0)):
                for host, port in servers:
                    up.add_metric([f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
                                  value)
            age.add_metric([], max(0.0, time.monotonic() - snapshot.taken_at))
        yield from (waiting, up, age)


def function_outcomes(functions: Iterable[str], totals: Counters
                      ) -> Iterator[tuple[str, float, float]]:
    """(function, complete, failed) for each function of a job; past MAX_FUNCTIONS the
    scoreboard counts them together, reported as function "_other"."""
    names = list(functions)
    if len(names) > MAX_FUNCTIONS:
        names = names[:MAX_FUNCTIONS - 1] + ["_other"]
    for index, name in enumerate(names):
        yield name, totals.outcomes[2 * index], totals.outcomes[2 * index + 1]


def histogram_buckets(counts: Iterable[float]) -> list[tuple[str, float]]:
    """Per-bucket counts to Prometheus's cumulative (le, count) pairs."""
    total = 0.0
    pairs = []
    for bound, count in zip(_BOUNDS, counts, strict=True):
        total += count
        pairs.append((bound, total))
    return pairs


def _rss(pid: int) -> int:
    """Resident bytes of one process (0 when it is already gone); raw fds: 200 of these are
    a good part of a scrape."""
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
    except OSError:
        return 0
    try:
        return int(os.read(fd, 256).split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0
    finally:
        os.close(fd)


def make_registry(source: MetricsSource) -> CollectorRegistry:
    """A registry of our collector and the master's own process metrics (process_*)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DriverCollector(source))
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The body and Content-Type for a scrape: OpenMetrics when `accept` asks for it."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def open_endpoint(source: MetricsSource, selector: selectors.BaseSelector, host: str,
                  port: int) -> MetricsServer:
    """The metrics endpoint on host:port, listening in the master's loop, reading `source`."""
    registry = make_registry(source)
    server = MetricsServer(lambda accept: exposition(registry, accept), selector,
                           host=host, port=port)
    server.open()
    return server
