"""A job's effective options: what its processes run with, resolved in one place.

The decorator, the class's attributes and the config's `job_runtime_attributes` are merged into
the job's spec by the loader; what a job leaves unset (None) falls back here to the top-level
settings. The fork (master/processes.py) and the master's start-up log read only this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gearman_driver.jobs.table import JobSpec
from gearman_driver.keepalive import DEFAULT_KEEPALIVE

if TYPE_CHECKING:
    from gearman_driver.config.settings import Settings

MIB = 1024 * 1024


@dataclass(frozen=True)
class JobOptions:
    """What one job's processes are started with."""

    backend: str
    max_jobs: int  # 0: never recycled for its job count
    max_jobs_jitter: int
    max_rss_mb: float  # 0: never recycled for its size
    max_workload: int  # bytes; a larger workload is refused without being run
    timeout: float | None
    keepalive: float = DEFAULT_KEEPALIVE  # seconds: probes and connect bound, gearmand connections
    concurrency: int = 1  # jobs one process holds at once


def effective_options(spec: JobSpec, settings: Settings) -> JobOptions:
    """The job's own value where it has one, else the top-level setting."""
    return JobOptions(
        backend=spec.worker_backend or settings.worker_backend,
        max_jobs=(spec.max_jobs_per_process if spec.max_jobs_per_process is not None
                  else settings.max_jobs_per_process),
        max_jobs_jitter=settings.max_jobs_jitter,
        max_rss_mb=spec.max_rss_mb if spec.max_rss_mb is not None else settings.max_rss_mb,
        max_workload=settings.max_workload_mb * MIB,
        timeout=spec.timeout,
        keepalive=settings.keepalive,
        concurrency=spec.concurrency,
    )
