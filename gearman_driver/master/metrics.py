"""Prometheus metrics of the master: a collector read at scrape time, and its exposition.

Nothing is counted here: the job table, the scoreboard (the children's counters), the
observer's last snapshot and a few counters of the master already hold every figure, and the
collector turns them into metric families only when Prometheus asks. prometheus_client's
registry and exposition code write the text (or OpenMetrics) format, so this module owns names,
labels and help texts, not formatting. Imported only when ``metrics_port`` is set.
"""

from __future__ import annotations

import os
import resource
import selectors
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, islice

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from gearman_driver.child.recycle import StatmReader
from gearman_driver.jobs.table import Job, JobSpec
from gearman_driver.master.metrics_http import MetricsServer
from gearman_driver.master.observer import Server, ServerSeen, Snapshot, server_label
from gearman_driver.master.processes import RECYCLED_FOR
from gearman_driver.scoreboard import DURATION_BUCKETS, MAX_FUNCTIONS, Counters, Scoreboard
from gearman_driver.version import __version__

__all__ = ["DriverCollector", "MetricsSource", "ProcessMemory", "exposition", "make_registry",
           "new_endpoint"]

_BOUNDS = tuple(f"{bound:g}" for bound in DURATION_BUCKETS) + ("+Inf",)
_PROCESSES, _BUSY = "gearman_driver_processes", "gearman_driver_processes_busy"
_SLOTS, _SLOTS_BUSY = "gearman_driver_slots", "gearman_driver_slots_busy"
_MIN, _MAX = "gearman_driver_min_processes", "gearman_driver_max_processes"
_DONE = "gearman_driver_jobs_total"
_DURATION = "gearman_driver_job_duration_seconds"
_BUCKET, _COUNT, _SUM = _DURATION + "_bucket", _DURATION + "_count", _DURATION + "_sum"
_STARTS = "gearman_driver_process_starts_total"
_FAILED = "gearman_driver_failed_starts_total"
_TIMEOUTS = "gearman_driver_job_timeouts_total"
_RECYCLED = "gearman_driver_recycled_total"


@dataclass
class MetricsSource:
    """Where the collector reads from; the driver passes its own live objects and getters."""

    jobs: Mapping[str, Job]
    scoreboard: Callable[[], Scoreboard | None]
    snapshot: Callable[[], Snapshot | None]
    backend: Callable[[], str]
    reloads: Mapping[str, int]  # "ok"/"failed" -> count
    loop_lag: Callable[[], float]
    servers: Callable[[], Sequence[ServerSeen]] = tuple  # each gearmand as last polled
    reconnects: Callable[[], Mapping[Server, int]] = dict  # by worker processes, per server


@dataclass(frozen=True, slots=True)
class _JobLabels:
    """The label sets of one job's samples, made once per job spec and shared by every scrape
    (prometheus_client only reads them): 1,700 of them per scrape at 50 jobs."""

    spec: JobSpec
    job: dict[str, str]
    outcomes: tuple[dict[str, str], ...]  # (complete, failed) per function, as counted
    buckets: tuple[dict[str, str], ...]
    recycled: tuple[dict[str, str], ...]  # in RECYCLED_FOR's order

    @property
    def width(self) -> int:
        """How many of a slot's counters the job uses: the sum, buckets, its outcomes."""
        return 1 + len(self.buckets) + len(self.outcomes)

    @classmethod
    def of(cls, name: str, spec: JobSpec) -> _JobLabels:
        functions = list(spec.functions)
        if len(functions) > MAX_FUNCTIONS:  # the scoreboard counts the rest together
            functions = functions[:MAX_FUNCTIONS - 1] + ["_other"]
        return cls(
            spec, {"job_name": name},
            tuple({"job_name": name, "function": function, "result": result}
                  for function in functions for result in ("complete", "failed")),
            tuple({"job_name": name, "le": bound} for bound in _BOUNDS),
            tuple({"job_name": name, "reason": reason} for reason in RECYCLED_FOR))


class DriverCollector(Collector):
    """Yields the gearman_driver_* families from the master's state at scrape time.

    The per-job samples go in through `Metric.add_sample` with label dicts cached per job:
    `add_metric` would build a dict per sample (and per histogram bucket), the largest part
    of this collector's cost."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source
        self._labels: dict[str, _JobLabels] = {}
        self._memory = ProcessMemory()

    def close(self) -> None:
        """Let go of the descriptors kept between scrapes."""
        self._memory.close()

    def collect(self) -> Iterator[Metric]:
        source = self.source
        board = source.scoreboard()
        yield from self._jobs(source.jobs, board)
        yield from self._gearmand(source.snapshot())
        yield from self._servers(source.servers(), source.reconnects())
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
                                value=self._memory.total(pids))

    def _jobs(self, jobs: Mapping[str, Job], board: Scoreboard | None) -> Iterator[Metric]:
        label = ["job_name"]
        processes = GaugeMetricFamily(_PROCESSES, "Processes of the job", labels=label)
        busy = GaugeMetricFamily(_BUSY, "Processes of the job running a job now", labels=label)
        slots = GaugeMetricFamily(_SLOTS, "Jobs the job's processes can hold at once "
                                  "(processes times concurrency)", labels=label)
        slots_busy = GaugeMetricFamily(_SLOTS_BUSY, "Jobs the job's processes hold now",
                                       labels=label)
        low = GaugeMetricFamily(_MIN, "The job's min_processes", labels=label)
        high = GaugeMetricFamily(_MAX, "The job's max_processes", labels=label)
        done = CounterMetricFamily(_DONE,
                                   "Jobs finished, by function and result (complete, failed)",
                                   labels=["job_name", "function", "result"])
        durations = HistogramMetricFamily(_DURATION, "How long the job's jobs ran", labels=label)
        starts = CounterMetricFamily(_STARTS, "Processes started for the job", labels=label)
        failed = CounterMetricFamily(_FAILED,
                                     "Process deaths counted as failed starts (the next start "
                                     "backs off)", labels=label)
        timeouts = CounterMetricFamily(_TIMEOUTS,
                                       "Processes killed for running a job past its timeout",
                                       labels=label)
        recycled = CounterMetricFamily(_RECYCLED, "Processes replaced, by reason",
                                       labels=["job_name", "reason"])
        for name, job in jobs.items():
            labels = self._labels_of(name, job.spec)
            n_busy = 0
            n_slots, n_in_hand = len(job.processes), 0  # a process of one slot: itself
            rows: list[Sequence[float]] = [job.counters.values]
            if board is not None:
                for process in job.processes.values():
                    n_busy += board.busy(process.slot)
                    rows.append(board.counters(process.slot))
                if job.spec.concurrency > 1:
                    views = [board.read(p.slot) for p in job.processes.values()]
                    n_slots = sum(view.slots for view in views)
                    n_in_hand = sum(view.jobs_in_hand for view in views)
                else:
                    n_in_hand = n_busy
            # Summed up to the last function of the job: the rest of the slot is unused.
            totals = Counters(list(map(sum, islice(zip(*rows, strict=True), labels.width))))
            one = labels.job
            processes.add_sample(_PROCESSES, one, len(job.processes))
            busy.add_sample(_BUSY, one, n_busy)
            slots.add_sample(_SLOTS, one, n_slots)
            slots_busy.add_sample(_SLOTS_BUSY, one, n_in_hand)
            low.add_sample(_MIN, one, job.min_processes)
            high.add_sample(_MAX, one, job.max_processes)
            for outcome, count in zip(labels.outcomes, totals.outcomes, strict=True):
                done.add_sample(_DONE, outcome, count)
            cumulative = list(accumulate(totals.buckets))
            for bound, count in zip(labels.buckets, cumulative, strict=True):
                durations.add_sample(_BUCKET, bound, count)
            durations.add_sample(_COUNT, one, cumulative[-1])
            durations.add_sample(_SUM, one, totals.duration_sum)
            starts.add_sample(_STARTS, one, job.starts_total)
            failed.add_sample(_FAILED, one, job.failed_starts_total)
            timeouts.add_sample(_TIMEOUTS, one, job.timeouts_total)
            counts = job.recycled_total  # every reason from zero, so that rate() sees the first
            for reason, reason_labels in zip(RECYCLED_FOR, labels.recycled, strict=True):
                recycled.add_sample(_RECYCLED, reason_labels, counts.get(reason, 0))
        yield from (processes, busy, slots, slots_busy, low, high, done, durations, starts,
                    failed, timeouts, recycled)

    def _labels_of(self, name: str, spec: JobSpec) -> _JobLabels:
        cached = self._labels.get(name)
        if cached is None or cached.spec is not spec:
            if len(self._labels) > 2 * len(self.source.jobs):  # forget removed jobs
                self._labels = {key: value for key, value in self._labels.items()
                                if key in self.source.jobs}
            cached = self._labels[name] = _JobLabels.of(name, spec)
        return cached

    @staticmethod
    def _gearmand(snapshot: Snapshot | None) -> Iterator[Metric]:
        waiting = GaugeMetricFamily("gearman_driver_gearmand_jobs_waiting",
                                    "Jobs queued in gearmand and not yet running, summed over "
                                    "the servers that answered", labels=["function"])
        age = GaugeMetricFamily("gearman_driver_gearmand_scrape_age_seconds",
                                "Seconds since the last poll of gearmand began")
        if snapshot is not None:
            for name in sorted(snapshot.functions):
                waiting.add_metric([name], snapshot.functions[name].waiting)
            age.add_metric([], max(0.0, time.monotonic() - snapshot.taken_at))
        yield from (waiting, age)

    @staticmethod
    def _servers(seen: Sequence[ServerSeen], reconnects: Mapping[Server, int]
                 ) -> Iterator[Metric]:
        """Each gearmand: up, our processes on it, our processes' reconnects to it."""
        up = GaugeMetricFamily("gearman_driver_gearmand_up",
                               "Whether the server answered the last poll", labels=["server"])
        connected = GaugeMetricFamily("gearman_driver_gearmand_workers_connected",
                                      "This driver's worker processes the server listed as "
                                      "connected at the last poll it answered",
                                      labels=["server"])
        again = CounterMetricFamily("gearman_driver_gearmand_reconnects",
                                    "Times a worker process connected to the server again "
                                    "after losing its connection", labels=["server"])
        for server in seen:
            if server.state == "unknown":
                continue
            up.add_metric([server.label], server.state == "up")
            if server.state == "up":
                connected.add_metric([server.label], server.processes)
        counted = dict.fromkeys((s.server for s in seen), 0) | dict(reconnects)
        for address, count in counted.items():
            again.add_metric([server_label(address)], count)
        yield from (up, connected, again)


class ProcessMemory:
    """The resident bytes of a set of processes, summed; each /proc/<pid>/statm stays open
    between scrapes (a `pread` costs a quarter of an open, read and close: 0.3 against 1.2 ms
    for 200 processes), up to `keep` of them (by default a quarter of the descriptor limit,
    at most 1,024); the others are opened each time."""

    def __init__(self, keep: int | None = None) -> None:
        self._readers: dict[int, StatmReader] = {}
        if keep is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            keep = 1024 if soft == resource.RLIM_INFINITY else min(1024, soft // 4)
        self._keep = keep

    def total(self, pids: list[int]) -> int:
        readers = self._readers
        total = kept = 0
        for pid in pids:
            reader = readers.get(pid)
            keep = reader is not None or len(readers) < self._keep
            if reader is None:
                reader = StatmReader(pid)
                if keep:
                    readers[pid] = reader
            kept += keep
            try:
                total += reader.rss()
            except OSError:  # gone since the job table was read: nothing resident
                pass
            if not keep:
                reader.close()
        if kept < len(readers):  # some are of processes gone: close theirs
            for pid in readers.keys() - set(pids):
                readers.pop(pid).close()
        return total

    def close(self) -> None:
        """Close every descriptor: with the endpoint, and in a forked child."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def make_registry(collector: DriverCollector) -> CollectorRegistry:
    """A registry of our collector and the master's own process metrics (process_*)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The body and Content-Type for a scrape: OpenMetrics when `accept` asks for it.

    Whatever a client puts in its Accept header costs it the format it asked for, never an
    error of ours (nor a line in the log): a header prometheus_client cannot negotiate (a
    version like `abc`, an unknown escaping, control characters that would be echoed into
    our Content-Type) gets the text format every Prometheus reads."""
    plain = choose_encoder("")
    chosen = plain
    if accept.isascii() and accept.isprintable():
        try:
            chosen = choose_encoder(accept)
        except Exception:  # prometheus_client's parsing of the client's text
            chosen = plain
    if chosen != plain:
        try:
            return chosen[0](registry), chosen[1]
        except Exception:  # e.g. an escaping or version it negotiated but cannot write
            pass
    return plain[0](registry), plain[1]


def new_endpoint(source: MetricsSource, selector: selectors.BaseSelector, host: str,
                 port: int) -> MetricsServer:
    """The metrics endpoint for host:port in the master's loop, reading `source`; it listens
    once opened (`open`, or a reload's `prepare` and `commit`)."""
    collector = DriverCollector(source)
    registry = make_registry(collector)
    return MetricsServer(lambda accept: exposition(registry, accept), selector,
                         host=host, port=port, release=collector.close)
