"""Reading, validating and merging gearman-driver settings.

Each YAML file is checked against ``schema/config.schema.json`` on its own, so a mistake is
reported at its own file, line and column; then the files are merged in order (mappings key by
key, anything else replaced), command-line overrides replace file values, and the merged result
is checked again. The outcome is one frozen :class:`Settings`; every user mistake on the way is
a one-line :class:`ConfigError` carrying ``exit_status`` 78 (EX_CONFIG).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

from gearman_driver.config.reading import (
    COMMAND_LINE,
    EX_CONFIG,
    ConfigError,
    MergedSource,
    Origin,
    Problem,
    Source,
    first_problem,
    format_path,
    got,
    problems,
    read_source,
)
from gearman_driver.peercred import resolve_users
from gearman_driver.ports import CONSOLE_PORT, GEARMAND_PORT
from gearman_driver.scoreboard import MAX_PROCESSES

__all__ = [
    "DEFAULTS",
    "EX_CONFIG",
    "ConfigError",
    "Settings",
    "coerce_override",
    "load_settings",
    "options_for",
    "schema",
    "validate_overrides",
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

_INT_KEYS = frozenset({"console_port", "metrics_port", "max_jobs_per_process", "max_jobs_jitter"})
_FLOAT_KEYS = frozenset({"interval", "max_idle_time", "graceful_timeout"})
_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}
_SERVER_ENTRY = re.compile(r"\s*(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]\s]*))(?::(?P<port>\d+))?\s*")


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema, from the installed package or, in a source tree, from ``schema/``."""
    try:
        text = (resources.files("gearman_driver.schema") / "config.schema.json").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        text = (Path(__file__).parents[2] / "schema" / "config.schema.json").read_text("utf-8")
    return with_process_ceiling(json.loads(text))


def with_process_ceiling(loaded: dict[str, Any]) -> dict[str, Any]:
    """The process ceiling has one home (the scoreboard's size); the schema gets it here."""
    limits = loaded["properties"]["job_runtime_attributes"]["additionalProperties"]["properties"]
    for key in ("min_processes", "max_processes"):
        limits[key]["maximum"] = MAX_PROCESSES
    return loaded


def _is_finite_number(checker: Any, value: Any) -> bool:
    """JSON has no NaN or infinity; YAML's ``.nan`` must not slip past ``minimum``."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """ECMA-262 ``$`` ends the string; Python's also matches before a final newline."""
    if isinstance(instance, str):
        python = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
        if not re.search(python, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _validator() -> Validator:
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("number", _is_finite_number)
    cls = jsonschema.validators.extend(base, {"pattern": _pattern}, type_checker=checker)
    validator: Validator = cls(schema())
    return validator


# --- checking -------------------------------------------------------------------------------


def _check(doc: Source) -> None:
    """Schema first, then the rules a schema cannot say (port range, min <= max)."""
    try:
        errors = list(_validator().iter_errors(doc.data))
    except RecursionError:
        raise ConfigError(f"{doc.where(())}: top level: nested too deeply") from None
    first_problem([p for error in errors for p in problems(error)], doc)
    found: list[Problem] = []
    for index, user in enumerate(doc.data.get("console_allow_users") or []):
        try:
            resolve_users([user])
        except KeyError:
            found.append(Problem(("console_allow_users", index),
                                 f"expected a user name, a uid or '*', got {got(user)} "
                                 "(no such user)"))
    if "server" in doc.data:
        try:
            parse_gearmand_servers(doc.data["server"])
        except _ServerError as exc:
            found.append(Problem(("server",) + exc.index, exc.text))
    for name, attrs in (doc.data.get("job_runtime_attributes") or {}).items():
        low, high = attrs.get("min_processes"), attrs.get("max_processes")
        if low is not None and high is not None and low > high:
            entry = ("job_runtime_attributes", name)
            if doc.set_later(entry + ("max_processes",), entry + ("min_processes",)):
                text = f"expected at least min_processes ({low}), got {got(high)}"
                found.append(Problem(entry + ("max_processes",), text))
            else:
                text = f"expected at most max_processes ({high}), got {got(low)}"
                found.append(Problem(entry + ("min_processes",), text))
    first_problem(found, doc)


class _ServerError(ValueError):
    def __init__(self, index: tuple[int, ...], text: str) -> None:
        super().__init__(text)
        self.index, self.text = index, text


def parse_gearmand_servers(value: str | Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``"a:1,b"`` or ``["a:1", "b"]`` to ``(("a", 1), ("b", 4730))``; IPv6 in brackets."""
    entries = (
        [(None, part) for part in value.split(",")]
        if isinstance(value, str)
        else list(enumerate(value))
    )
    if not entries:
        raise _ServerError((), "expected at least one 'host[:port]', got empty list")
    servers: list[tuple[str, int]] = []
    for index, entry in entries:
        at = () if index is None else (index,)
        shown = got(value if index is None else entry)
        match = _SERVER_ENTRY.fullmatch(entry)
        v6 = match.group("v6") if match else None
        host = v6 if v6 is not None else match.group("host") if match else ""
        if not match or not host:
            raise _ServerError(at, f"expected 'host[:port]' with a host name, got {shown}")
        if v6 is not None:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise _ServerError(at, f"expected an IPv6 address in [], got {shown}") from None
        port = int(match.group("port")) if match.group("port") else GEARMAND_PORT
        if not 1 <= port <= 65535:
            raise _ServerError(at, f"expected a port 1..65535, got {shown}")
        servers.append((host, port))
    return tuple(servers)


def server_string(servers: Sequence[tuple[str, int]]) -> str:
    """Canonical ``host:port,host:port`` (IPv6 hosts in brackets), as gearmand tools write it."""
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in servers)


# --- command-line values --------------------------------------------------------------------


def coerce_override(key: str, value: Any) -> Any:
    """Turn a command-line string into the number the schema wants; leave the rest to the schema."""
    if not isinstance(value, str) or key not in _INT_KEYS | _FLOAT_KEYS:
        return value
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    if key in _FLOAT_KEYS:
        try:
            return float(text)
        except ValueError:
            pass
    return value


def validate_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce and check command-line values; errors read ``command line: --key: expected ...``."""
    values = {key: coerce_override(key, value) for key, value in overrides.items()}
    _check(Source(COMMAND_LINE, values))
    return values


# --- merging --------------------------------------------------------------------------------


def _paths(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, Mapping):
        for key, child in value.items():
            yield from _paths(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, path + (index,))


def _merge(
    into: dict[str, Any],
    new: Mapping[Any, Any],
    doc: Source,
    origins: dict[tuple[Any, ...], Origin],
    seq: int,
    path: tuple[Any, ...] = (),
) -> None:
    """Mappings merge key by key; a scalar or list replaces; remember who set each path."""
    for key, value in new.items():
        here = path + (key,)
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            origins[here] = Origin(doc.where(here, True), doc.where(here), seq)
            _merge(into[key], value, doc, origins, seq, here)
            continue
        for stale in [p for p in origins if p[: len(here)] == here]:
            del origins[stale]
        into[key] = copy.deepcopy(value)
        for sub in _paths(value, here):
            origins[sub] = Origin(doc.where(sub, True), doc.where(sub), seq)


# --- the result -----------------------------------------------------------------------------


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
    for key in ("min_processes", "max_processes", "max_jobs_per_process"):
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
    merged: dict[str, Any] = {}
    origins: dict[tuple[Any, ...], Origin] = {}
    for seq, path in enumerate(config_files, start=1):
        doc = read_source(str(path))
        _check(doc)
        _merge(merged, doc.data, doc, origins, seq)
    if overrides:
        cli = Source(COMMAND_LINE, validate_overrides(overrides))
        for key, value in cli.data.items():
            for stale in [p for p in origins if p[:1] == (key,)]:
                del origins[stale]
            merged[key] = copy.deepcopy(value)
            for sub in _paths(value, (key,)):
                origins[sub] = Origin(COMMAND_LINE, COMMAND_LINE, len(config_files) + 1)
    _check(MergedSource(merged, origins))
    return _settings({**copy.deepcopy(DEFAULTS), **merged}, config_files, origins)


def options_for(settings: Settings, class_path: str) -> dict[str, Any]:
    """Constructor options for one worker class: GLOBAL, then the class's own keys on top."""
    options = copy.deepcopy(dict(settings.worker_options.get("GLOBAL", {})))
    options.update(copy.deepcopy(dict(settings.worker_options.get(class_path, {}))))
    return options
