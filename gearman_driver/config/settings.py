"""gearman-driver's settings: their defaults and the one frozen :class:`Settings` a master runs
with.

Each YAML file is checked against ``schema/config.schema.json`` on its own, so a mistake is
reported at its own file, line and column (`validation`); then the files are merged in order and
command-line overrides replace file values (`merging`), and the merged result is checked again.
Every user mistake on the way is a one-line :class:`ConfigError` carrying ``exit_status`` 78
(EX_CONFIG).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gearman_driver.config.merging import merge_sources
from gearman_driver.config.reading import (
    COMMAND_LINE,
    EX_CONFIG,
    ConfigError,
    MergedSource,
    Origin,
    format_path,
)
from gearman_driver.config.servers import parse_gearmand_servers, server_string
from gearman_driver.keepalive import DEFAULT_KEEPALIVE
from gearman_driver.ports import CONSOLE_PORT

__all__ = [
    "DEFAULTS",
    "EX_CONFIG",
    "ConfigError",
    "Settings",
    "load_settings",
    "options_for",
]


#: Value of every setting no file and no flag sets.
DEFAULTS: dict[str, Any] = {
    "namespaces": [],
    "lib": [],
    "server": "localhost:4730",
    "console_port": CONSOLE_PORT,
    "console_host": "127.0.0.1",
    "console_socket": None,
    "console_allow_users": [],
    "metrics_port": 0,
    "metrics_host": "127.0.0.1",
    "interval": 5,
    "max_idle_time": 0,
    "graceful_timeout": 30,
    "keepalive": DEFAULT_KEEPALIVE,
    "logfile": None,
    "loglevel": "INFO",
    "loglayout": "[%d] %p %m%n",
    "daemonize": False,
    "pidfile": None,
    "unknown_job_callback": None,
    "wanted": None,
    "worker_backend": "native",
    "max_jobs_per_process": 0,
    "max_jobs_jitter": 0,
    "max_rss_mb": 0,
    "max_workload_mb": 256,
    "worker_options": {},
    "job_runtime_attributes": {},
}

_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}


@dataclass(frozen=True)
class Settings:
    """Everything the driver needs, checked; ``origins`` remembers where each value came from."""

    namespaces: tuple[str, ...]
    lib: tuple[str, ...]
    server: tuple[tuple[str, int], ...]
    server_string: str
    console_port: int
    console_host: str
    console_socket: str | None
    console_allow_users: tuple[str | int, ...]
    metrics_port: int
    metrics_host: str
    interval: float
    max_idle_time: float
    graceful_timeout: float
    keepalive: float
    logfile: str | None
    loglevel: str
    loglayout: str
    daemonize: bool
    pidfile: str | None
    unknown_job_callback: str | None
    wanted: str | None
    worker_backend: str
    max_jobs_per_process: int
    max_jobs_jitter: int
    max_rss_mb: float
    max_workload_mb: int
    worker_options: Mapping[str, Mapping[str, Any]]
    job_runtime_attributes: Mapping[str, Mapping[str, Any]]
    config_files: tuple[str, ...] = ()
    origins: Mapping[tuple[Any, ...], Origin] = field(
        default_factory=dict, repr=False, compare=False
    )

    def locate(self, *key_path: str) -> str:
        """``file:line:col`` of the key as last set, ``command line``, or ``defaults``."""
        return MergedSource({}, self.origins).where(key_path, at_key=True)

    def error(self, key_path: tuple[str, ...], expected: str) -> ConfigError:
        """A ConfigError for a key this module cannot judge alone (e.g. a job that is missing).

        ``expected`` is the text after ``<key.path>: `` verbatim, e.g. ``"expected ..., got ..."``.
        """
        where = self.locate(*key_path)
        return ConfigError(f"{where}: {format_path(key_path, where == COMMAND_LINE)}: {expected}")


def _as_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _job_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(attrs)
    for key in ("min_processes", "max_processes", "max_jobs_per_process", "concurrency"):
        if key in out:
            out[key] = int(out[key])
    for key in ("timeout", "max_rss_mb"):
        if out.get(key) is not None:
            out[key] = float(out[key])
    return out


def _settings(data: Mapping[str, Any], files: Sequence[str], origins: Any) -> Settings:
    servers = parse_gearmand_servers(data["server"])
    level = str(data["loglevel"]).upper()
    return Settings(
        namespaces=_as_tuple(data["namespaces"]),
        lib=_as_tuple(data["lib"]),
        server=servers,
        server_string=server_string(servers),
        console_port=int(data["console_port"]),
        console_host=data["console_host"],
        console_socket=data["console_socket"],
        console_allow_users=tuple(data["console_allow_users"]),
        metrics_port=int(data["metrics_port"]),
        metrics_host=data["metrics_host"],
        interval=float(data["interval"]),
        max_idle_time=float(data["max_idle_time"]),
        graceful_timeout=float(data["graceful_timeout"]),
        keepalive=float(data["keepalive"]),
        logfile=data["logfile"],
        loglevel=_LEVEL_ALIASES.get(level, level),
        loglayout=data["loglayout"],
        daemonize=bool(data["daemonize"]),
        pidfile=data["pidfile"],
        unknown_job_callback=data["unknown_job_callback"],
        wanted=data["wanted"],
        worker_backend=data["worker_backend"],
        max_jobs_per_process=int(data["max_jobs_per_process"]),
        max_jobs_jitter=int(data["max_jobs_jitter"]),
        max_rss_mb=float(data["max_rss_mb"]),
        max_workload_mb=int(data["max_workload_mb"]),
        worker_options={k: dict(v) for k, v in data["worker_options"].items()},
        job_runtime_attributes={
            k: _job_attributes(v) for k, v in data["job_runtime_attributes"].items()
        },
        config_files=tuple(str(name) for name in files),
        origins=origins,
    )



def load_settings(
    config_files: Sequence[str], overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Read, check and merge ``config_files`` in order, then apply command-line ``overrides``."""
    merged = merge_sources(config_files, overrides)
    return _settings({**copy.deepcopy(DEFAULTS), **merged.data}, config_files, merged.origins)


def options_for(settings: Settings, class_path: str) -> dict[str, Any]:
    """Constructor options for one worker class: GLOBAL, then the class's own keys on top."""
    options = copy.deepcopy(dict(settings.worker_options.get("GLOBAL", {})))
    options.update(copy.deepcopy(dict(settings.worker_options.get(class_path, {}))))
    return options
