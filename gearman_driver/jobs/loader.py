"""Namespaces -> imported modules -> Worker classes -> job specs.

Everything is imported and every worker object built here, in the master, before any fork:
that is what lets the children share the code and data copy-on-write.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

from gearman_driver.api import ATTRIBUTE_KEYS, MAX_CONCURRENCY, Worker, job_marker
from gearman_driver.config.settings import ConfigError, Settings, options_for
from gearman_driver.jobs.table import USER_CODE_ERRORS, JobSpec, LoadError, MethodSpec
from gearman_driver.scoreboard import MAX_PROCESSES

log = logging.getLogger("gearman_driver.loader")

RUNTIME_KEYS = ("min_processes", "max_processes", "timeout", "max_jobs_per_process",
                "worker_backend", "concurrency")


def _location(exc: BaseException) -> str:
    """` (at file:line)` of the innermost frame of the user's code, without importlib's."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (at {exc.filename}:{exc.lineno})"
    tb = exc.__traceback__
    frames = [f for f in (traceback.extract_tb(tb) if tb else [])
              if not f.filename.startswith("<frozen")]  # importlib's frames mean nothing here
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def cause_of(exc: BaseException) -> str:
    """The one-line cause of a failure in worker code."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({'' if exc.code is None else repr(exc.code)})"
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def _import_error(module: str, exc: BaseException) -> LoadError:
    return LoadError(f"cannot import worker module {module}: {cause_of(exc)}{_location(exc)}")


ConfigErrorFactory = Callable[[tuple[Any, ...], str], Exception]


Wanted = Callable[[str], Any]


def import_namespaces(namespaces: Sequence[str], lib: Sequence[str] = (),
                      error: ConfigErrorFactory | None = None,
                      wanted: Wanted | str | None = None) -> list[ModuleType]:
    """Import every module below each namespace package, recursively; `lib` dirs go first.

    `wanted` (a callable, or ``"module:function"`` imported once `lib` is on sys.path) is
    asked about each module name found - the namespace itself included - before anything is
    imported, as Gearman::Driver's Loader does; only the names it returns true for are
    imported (with their parent packages, as Python requires). A namespace that does not
    exist is the config's mistake (reported at its entry through `error`); an import that
    fails inside the worker code names the module and the cause."""
    for directory in reversed(lib):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    keep = import_callback(wanted, "wanted", error) if isinstance(wanted, str) else wanted
    modules: list[ModuleType] = []
    for index, namespace in enumerate(namespaces):
        try:
            names = module_names(namespace)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if error is not None and (namespace == missing or
                                      namespace.startswith(missing + ".")):
                raise error(("namespaces", index),
                            f"expected an importable package, got {namespace!r} "
                            f"(no module named {missing!r} on sys.path or in lib)") from exc
            raise _import_error(namespace, exc) from exc
        except USER_CODE_ERRORS as exc:
            raise _import_error(namespace, exc) from exc
        for name in names:
            if keep is not None and not _is_wanted(keep, name):
                continue
            try:
                modules.append(importlib.import_module(name))
            except USER_CODE_ERRORS as exc:
                raise _import_error(name, exc) from exc
    return modules


def module_names(namespace: str) -> list[str]:
    """The namespace and every module below it, found on disk without importing any of them
    (only the namespace's parent packages are imported, to locate it)."""
    spec = importlib.util.find_spec(namespace)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {namespace!r}", name=namespace)
    below = spec.submodule_search_locations
    return [namespace, *sorted(_walk(list(below), namespace + "."))] if below else [namespace]


def _walk(paths: list[str], prefix: str) -> Iterable[str]:
    for info in pkgutil.iter_modules(paths, prefix):
        yield info.name
        if info.ispkg:
            where = getattr(info.module_finder, "path", None)
            if isinstance(where, str):
                inner = [os.path.join(where, info.name.rpartition(".")[2])]
            else:  # not a plain directory (e.g. a zip): ask the package itself
                try:
                    inner = list(importlib.import_module(info.name).__path__)
                except USER_CODE_ERRORS as exc:
                    raise _import_error(info.name, exc) from exc
            yield from _walk(inner, info.name + ".")


def _is_wanted(keep: Wanted, name: str) -> bool:
    try:
        return bool(keep(name))
    except USER_CODE_ERRORS as exc:
        raise LoadError(f"wanted({name!r}) failed: {cause_of(exc)}") from exc


def worker_classes(modules: Iterable[ModuleType]) -> list[type[Worker]]:
    """Worker subclasses *defined* in these modules that have at least one @job method."""
    found: list[type[Worker]] = []
    seen: set[type[Worker]] = set()
    for module in modules:
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Worker)
                and obj is not Worker
                and obj.__module__ == module.__name__
                and obj not in seen
                and job_methods(obj)
            ):
                seen.add(obj)
                found.append(obj)
    return found


def job_methods(cls: type) -> dict[str, Mapping[str, Any]]:
    """Method name -> attributes given to @job, including methods inherited from base classes."""
    methods: dict[str, Mapping[str, Any]] = {}
    for name in sorted(dir(cls)):
        try:
            attr = inspect.getattr_static(cls, name)
        except AttributeError:
            continue
        marker = job_marker(attr)
        if marker is not None:
            methods[name] = marker.given
    return methods


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def build_worker(cls: type[Worker], server: str, options: Mapping[str, Any]) -> Worker:
    """`cls(server=..., **options)`; a rejected option or a failing constructor is one line."""
    try:
        return cls(server=server, **options)
    except TypeError as exc:
        raise LoadError(
            f"{class_path(cls)}: the constructor rejected the worker_options "
            f"({', '.join(sorted(options)) or 'none'}): {exc}"
        ) from exc
    except USER_CODE_ERRORS as exc:
        raise LoadError(f"{class_path(cls)}: the constructor failed: {cause_of(exc)}"
                        f"{_location(exc)}") from exc


def _check_keys(where: str, attributes: Mapping[str, Any]) -> None:
    unknown = sorted(set(attributes) - set(ATTRIBUTE_KEYS))
    if unknown:
        raise LoadError(f"{where}: unknown job attribute {unknown[0]!r} "
                        f"(expected one of: {', '.join(ATTRIBUTE_KEYS)})")


def exceptions_flag(where: str, value: Any) -> bool:
    """The `exceptions` attribute: a bool, False when not given."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise LoadError(f"{where}: exceptions must be true or false, got {value!r}")
    return value


def coder(worker: Worker, where: str, value: Any, default: str) -> Callable[[Any], Any] | None:
    if value in (None, False):
        return None
    name = default if value is True else value
    if callable(name):
        return name
    method = getattr(worker, str(name), None)
    if not callable(method):
        raise LoadError(f"{where}: {default}={value!r} names no method of the class")
    return method


def check_limits(where: str, minimum: Any, maximum: Any) -> tuple[int, int]:
    """A job's process limits: integers 0..MAX_PROCESSES (the scoreboard's size), min <= max."""
    for key, value in (("min_processes", minimum), ("max_processes", maximum)):
        if not isinstance(value, int) or isinstance(value, bool) or not \
                0 <= value <= MAX_PROCESSES:
            raise LoadError(f"{where}: {key} must be an integer 0..{MAX_PROCESSES}, "
                            f"got {value!r}")
    if minimum > maximum:
        raise LoadError(f"{where}: min_processes ({minimum}) is greater than "
                        f"max_processes ({maximum})")
    return minimum, maximum


def check_concurrency(where: str, value: Any) -> int:
    """A job's `concurrency`: an integer 1..MAX_CONCURRENCY (1 when not given)."""
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or \
            not 1 <= value <= MAX_CONCURRENCY:
        raise LoadError(f"{where}: concurrency must be an integer 1..{MAX_CONCURRENCY}, "
                        f"got {value!r}")
    return value


def method_spec(worker: Worker, where: str, function: str, body: Callable[..., Any],
                attributes: Mapping[str, Any]) -> MethodSpec:
    """One Gearman function of a job, with its coders and exception flag checked."""
    return MethodSpec(function=function, body=body,
                      encode=coder(worker, where, attributes.get("encode"), "encode"),
                      decode=coder(worker, where, attributes.get("decode"), "decode"),
                      exceptions=exceptions_flag(where, attributes.get("exceptions")),
                      is_async=inspect.iscoroutinefunction(body))


def added_job_spec(name: str, worker: Worker, methods: Sequence[Mapping[str, Any]],
                   min_processes: Any, max_processes: Any) -> JobSpec:
    """Gearman::Driver's `add_job`: a job without decorators; methods are {"name", "body",
    "encode", "decode", "exceptions"}, bodies plain functions or bound methods."""
    where = f"add_job({name})"
    specs = []
    for method in methods:
        body = method["body"]
        bound = body if getattr(body, "__self__", None) is not None else \
            body.__get__(worker, type(worker))
        specs.append(method_spec(worker, where, str(method["name"]), bound, method))
    minimum, maximum = check_limits(where, min_processes, max_processes)
    return JobSpec(name, worker, class_path(type(worker)), tuple(specs), minimum, maximum)


def job_specs(worker: Worker) -> list[JobSpec]:
    """The jobs one worker object yields: one per method, or one per process group."""
    cls = type(worker)
    path = class_path(cls)
    _check_keys(f"{path}.default_attributes", cls.default_attributes)
    _check_keys(f"{path}.override_attributes", cls.override_attributes)
    prefix = worker.job_prefix()
    groups: dict[str, list[tuple[str, dict[str, Any], Mapping[str, Any]]]] = {}
    for method_name, given in job_methods(cls).items():
        attributes: dict[str, Any] = {"min_processes": 1}
        attributes.update(cls.default_attributes)
        attributes.update(given)
        attributes.update(cls.override_attributes)
        explicit = {**given, **cls.override_attributes}
        key = attributes.get("process_group") or method_name
        groups.setdefault(str(key), []).append((method_name, attributes, explicit))

    specs = []
    for key, members in groups.items():
        where = f"{path}.{key}"
        merged: dict[str, Any] = dict(members[0][1])
        for attr in ("min_processes", "max_processes", "timeout", "max_jobs_per_process",
                     "worker_backend", "concurrency"):
            values = {repr(m[2][attr]): m[2][attr] for m in members if attr in m[2]}
            if len(values) > 1:
                raise LoadError(f"{where}: process group gives {attr} twice with different "
                                f"values ({', '.join(sorted(values))})")
            if values:
                merged[attr] = next(iter(values.values()))
        minimum = merged.get("min_processes", 1)
        maximum = merged.get("max_processes")
        if maximum is None:
            maximum = max(1, minimum) if isinstance(minimum, int) else 1
        minimum, maximum = check_limits(where, minimum, maximum)
        for name, _, _ in members:
            if not callable(getattr(worker, name)):
                raise LoadError(f"{path}.{name}: an instance attribute {name!r} hides the "
                                f"@job method of that name")
        methods = tuple(method_spec(worker, f"{path}.{name}", prefix + name,
                                    getattr(worker, name), attrs)
                        for name, attrs, _ in members)
        specs.append(JobSpec(
            name=prefix + key, worker=worker, class_path=path, methods=methods,
            min_processes=minimum, max_processes=maximum,
            timeout=merged.get("timeout"),
            max_jobs_per_process=merged.get("max_jobs_per_process"),
            worker_backend=merged.get("worker_backend"),
            concurrency=check_concurrency(where, merged.get("concurrency")),
        ))
    return specs


def apply_runtime_attributes(
    specs: Sequence[JobSpec],
    runtime: Mapping[str, Mapping[str, Any]],
    error: ConfigErrorFactory,
) -> list[JobSpec]:
    """Override limits from `job_runtime_attributes`; a key naming no job is an error."""
    by_name = {spec.name: spec for spec in specs}
    for key in runtime:
        if key not in by_name:
            known = ", ".join(sorted(by_name)) or "none loaded"
            raise error(("job_runtime_attributes", key), f"names no job (jobs: {known})")
    result = []
    for spec in specs:
        override = runtime.get(spec.name, {})
        minimum = override.get("min_processes", spec.min_processes)
        maximum = override.get("max_processes", spec.max_processes)
        if minimum > maximum:
            key = "min_processes" if "min_processes" in override else "max_processes"
            raise error(("job_runtime_attributes", spec.name, key),
                        f"min_processes ({minimum}) is greater than max_processes ({maximum})")
        result.append(JobSpec(
            name=spec.name, worker=spec.worker, class_path=spec.class_path,
            methods=spec.methods, min_processes=minimum, max_processes=maximum,
            timeout=override.get("timeout", spec.timeout),
            max_jobs_per_process=override.get("max_jobs_per_process",
                                              spec.max_jobs_per_process),
            worker_backend=override.get("worker_backend", spec.worker_backend),
            max_rss_mb=override.get("max_rss_mb", spec.max_rss_mb),
            concurrency=override.get("concurrency", spec.concurrency),
        ))
    return result


def check_backends(specs: Sequence[JobSpec], default_backend: str,
                   runtime: Mapping[str, Mapping[str, Any]], error: ConfigErrorFactory) -> None:
    """Slots need the native backend (pygearman holds one job per worker and has no event
    loop): a job with `concurrency` > 1 or an `async def` method on pygearman is a mistake,
    told in one line naming the job, at the setting that chose pygearman for it."""
    for spec in specs:
        backend = spec.worker_backend or default_backend
        if spec.slotted and backend != "native":
            what = f"concurrency {spec.concurrency}" if spec.concurrency > 1 else \
                "an async def method"
            own = runtime.get(spec.name, {})
            key: tuple[str, ...] = ("worker_backend",)
            if "worker_backend" in own:
                key = ("job_runtime_attributes", spec.name, "worker_backend")
            elif "concurrency" in own:
                key = ("job_runtime_attributes", spec.name, "concurrency")
            raise error(key, f"job {spec.name}: {what} needs the native worker backend, "
                             f"not {backend}")


def load_jobs(
    namespaces: Sequence[str],
    lib: Sequence[str],
    server: str,
    options_for: Callable[[str], Mapping[str, Any]],
    error: ConfigErrorFactory | None = None,
    wanted: Wanted | str | None = None,
) -> list[JobSpec]:
    """Import the (wanted) modules of the namespaces, build one worker object per class, and
    return their jobs."""
    modules = import_namespaces(namespaces, lib, error, wanted)
    specs: list[JobSpec] = []
    for namespace in namespaces:
        classes = worker_classes(m for m in modules
                                 if m.__name__ == namespace
                                 or m.__name__.startswith(namespace + "."))
        if not classes:
            log.warning("namespace %s yields no job (no Worker subclass with @job methods)",
                        namespace)
        for cls in classes:
            worker = build_worker(cls, server, options_for(class_path(cls)))
            specs.extend(job_specs(worker))
    return specs


def load_configured(settings: Settings, wanted: Wanted | str | None = None
                    ) -> tuple[list[JobSpec], Callable[..., Any] | None]:
    """Everything a master loads from its settings: the jobs (limits from
    `job_runtime_attributes` applied) and the `unknown_job_callback`, imported after the
    namespaces so that `lib` is on sys.path. Raises ConfigError or LoadError, in one line,
    also for worker code that fails where no step above expects it (a `prefix()` method, a
    property read while the jobs are collected)."""
    try:
        specs = load_jobs(settings.namespaces, settings.lib, settings.server_string,
                          lambda path: options_for(settings, path), settings.error,
                          wanted if wanted is not None else settings.wanted)
        specs = apply_runtime_attributes(specs, settings.job_runtime_attributes, settings.error)
        check_backends(specs, settings.worker_backend, settings.job_runtime_attributes,
                       settings.error)
        callback = (import_callback(settings.unknown_job_callback, "unknown_job_callback",
                                    settings.error)
                    if settings.unknown_job_callback else None)
    except (LoadError, ConfigError):
        raise
    except USER_CODE_ERRORS as exc:
        raise LoadError(f"loading the worker code failed: {cause_of(exc)}"
                        f"{_location(exc)}") from exc
    return specs, callback


def import_callback(spec: str, key: str = "unknown_job_callback",
                    error: ConfigErrorFactory | None = None) -> Callable[..., Any]:
    """Resolve a ``"module:function"`` config value (`key`); a bad one is a config error."""
    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
        problem = "" if callable(function) else f"{spec} is not callable"
    except USER_CODE_ERRORS as exc:
        problem = f"expected an importable 'module:function', got {spec!r} "
        problem += f"({exc if isinstance(exc, Exception) else cause_of(exc)})"
    if problem:
        if error is None:
            raise LoadError(f"{key}: {problem}")
        raise error((key,), problem)
    return function
