"""What a reload must do, decided from the old and new settings and the loaded workers:
pure functions, no I/O on the master's state (master/reload.py applies the plan).

- which worker classes need new objects (their `worker_options` or the server list changed);
- whether the master must re-execute itself (namespaces, `lib`, `wanted`, the unknown job
  callback, or the content of the worker code on disk changed);
- whether the reload is refused outright (a setting a running master cannot take);
- which jobs roll (their processes are replaced: a new worker object, new servers, or a
  setting their processes were started with);
- when a reload is refused (the new options change which jobs a class defines).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gearman_driver.api import Worker
from gearman_driver.config.settings import Settings, options_for
from gearman_driver.jobs.codestamp import CodeStamp, changes
from gearman_driver.jobs.loader import (
    apply_runtime_attributes,
    build_worker,
    check_backends,
    job_specs,
)
from gearman_driver.jobs.table import JobSpec, JobTable, LoadError

#: A job's own settings its processes are started with (a change rolls the job) ...
CHILD_SIDE_ATTRIBUTES = ("max_jobs_per_process", "worker_backend", "max_rss_mb", "concurrency")
#: ... and the top-level ones (a change rolls every job).
CHILD_SIDE_SETTINGS = ("worker_backend", "max_jobs_per_process", "max_jobs_jitter",
                       "max_rss_mb", "max_workload_mb")
#: Settings whose change needs a fresh master: they decide what worker code is imported.
REEXEC_SETTINGS = ("namespaces", "lib", "wanted", "unknown_job_callback")
#: Settings a running master cannot take: a reload that changes one is refused.
REFUSED_SETTINGS = ("daemonize",)

#: How a reload applies each setting; `tests/unit/test_reload_plan.py` checks that every
#: field of Settings is here, so that no setting can be accepted by a reload and ignored.
APPLIED_BY = {
    **{key: "re-exec" for key in REEXEC_SETTINGS},
    **{key: "refused" for key in REFUSED_SETTINGS},
    **{key: "rolling restart" for key in CHILD_SIDE_SETTINGS},
    "server": "rolling restart", "server_string": "rolling restart",
    "worker_options": "rolling restart of the class's jobs",
    "job_runtime_attributes": "live (limits, timeout) or rolling restart of the job",
    "console_port": "endpoints", "console_host": "endpoints", "console_socket": "endpoints",
    "metrics_port": "endpoints", "metrics_host": "endpoints",
    "console_allow_users": "live", "interval": "live", "max_idle_time": "live",
    "graceful_timeout": "live",
    "keepalive": "live, the connections made from now on (the log says so)",
    "logfile": "live, every process", "loglevel": "live, every process",
    "loglayout": "live, every process",
    "pidfile": "live (the new file is locked before the old one is let go)",
    "config_files": "fixed (the command line's)", "origins": "bookkeeping",
}


@dataclass(frozen=True)
class ReloadOutcome:
    """How a reload ended: applied (`ok`), or refused with its one-line `error`."""

    ok: bool
    error: str = ""
    finished_at: float = 0.0  # time.time()

    @property
    def status(self) -> str | None:
        """What STATUS shows instead of the process counts, until the next good reload."""
        return None if self.ok else (f"reload failed: {self.error}; "
                                     f"running on the previous configuration")


def refusal(old: Settings, new: Settings) -> str | None:
    """Why a running master cannot take `new` at all, or None."""
    for key in REFUSED_SETTINGS:
        if getattr(old, key) != getattr(new, key):
            return (f"{new.locate(key)}: {key}: cannot change while gearman-driver runs; "
                    f"restart it to apply the new value")
    return None


def reexec_reason(old: Settings, new: Settings, imported: CodeStamp,
                  on_disk: CodeStamp) -> str | None:
    """Why the master must re-execute itself to apply `new`, or None: a setting that decides
    what is imported changed, or the worker code it imported differs on disk (by content)."""
    keys = [key for key in REEXEC_SETTINGS if getattr(old, key) != getattr(new, key)]
    if keys:
        return f"{' and '.join(keys)} changed"
    changed = changes(imported, on_disk)
    if changed:
        return f"worker code changed ({', '.join(changed)})"
    return None


def changed_classes(class_paths: Mapping[str, Worker], old: Settings,
                    new: Settings) -> set[str]:
    """Classes whose worker objects must be built again: new server list or options."""
    return {path for path in class_paths
            if old.server_string != new.server_string
            or options_for(old, path) != options_for(new, path)}


def rebuilt_specs(loaded_workers: Mapping[str, Worker], jobs: JobTable, old: Settings,
                  new: Settings) -> tuple[dict[str, JobSpec], dict[str, Worker]]:
    """Every job's spec under the new settings, and the worker objects built anew (by class);
    LoadError refuses the reload when the classes would define other jobs."""
    specs: list[JobSpec] = []
    rebuilt = changed_classes(loaded_workers, old, new)
    for path, current in loaded_workers.items():
        if path not in rebuilt:
            specs.extend(job_specs(current))
            continue
        worker = build_worker(type(current), new.server_string, options_for(new, path))
        specs.extend(job_specs(worker))
    known = {name for name in jobs if jobs[name].spec.class_path in loaded_workers}
    names = {spec.name for spec in specs}
    if names != known:
        raise LoadError("the new worker_options change which jobs the classes define; "
                        "restart gearman-driver to apply them")
    specs = apply_runtime_attributes(specs, new.job_runtime_attributes, new.error)
    check_backends(specs, new.worker_backend, new.job_runtime_attributes, new.error)
    result = {spec.name: spec for spec in specs}
    for name in jobs:  # jobs added with add_job keep their spec and limits
        if name not in result:
            result[name] = jobs[name].spec
    workers = {spec.class_path: spec.worker for spec in specs if spec.class_path in rebuilt}
    return result, workers


def restart_needed(current: JobSpec, new: JobSpec, old: Settings, settings: Settings) -> bool:
    """Whether a job's processes must be replaced to run with `new` under `settings`."""
    if current.worker is not new.worker or old.server != settings.server:
        return True
    if any(getattr(current, a) != getattr(new, a) for a in CHILD_SIDE_ATTRIBUTES):
        return True
    return any(getattr(old, key) != getattr(settings, key) for key in CHILD_SIDE_SETTINGS)
