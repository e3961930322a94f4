"""The developer's API: the `Worker` base class and the `@job` decorator.

A method marked `@job` becomes a Gearman function. The attributes a decorator gives are merged
with the class's `default_attributes` (before) and `override_attributes` (after), as
Gearman::Driver's worker attributes were; the config's `job_runtime_attributes` come last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, overload

JOB_MARKER = "__gearman_driver_job__"

# Keys a job attribute mapping may hold (decorator, default/override_attributes, runtime config).
ATTRIBUTE_KEYS = (
    "min_processes",
    "max_processes",
    "process_group",
    "encode",
    "decode",
    "timeout",
    "max_jobs_per_process",
    "worker_backend",
    "exceptions",
    "concurrency",
)

#: The most jobs one process may hold at once (`concurrency`): slots are threads or tasks of
#: one process, and each costs a little memory (an OS thread's stack for a plain method).
MAX_CONCURRENCY = 1024

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class JobMarker:
    """What `@job` records on a method: only the attributes the developer actually gave."""

    given: Mapping[str, Any]


@overload
def job(func: F) -> F: ...


@overload
def job(
    func: None = None,
    *,
    min_processes: int | None = None,
    max_processes: int | None = None,
    process_group: str | None = None,
    encode: bool | str | None = None,
    decode: bool | str | None = None,
    timeout: float | None = None,
    max_jobs_per_process: int | None = None,
    worker_backend: str | None = None,
    exceptions: bool | None = None,
    concurrency: int | None = None,
) -> Callable[[F], F]: ...


def job(
    func: F | None = None,
    *,
    min_processes: int | None = None,
    max_processes: int | None = None,
    process_group: str | None = None,
    encode: bool | str | None = None,
    decode: bool | str | None = None,
    timeout: float | None = None,
    max_jobs_per_process: int | None = None,
    worker_backend: str | None = None,
    exceptions: bool | None = None,
    concurrency: int | None = None,
) -> F | Callable[[F], F]:
    """Mark a method `(self, job, workload)` as a Gearman function.

    Bare `@job` means one process (min 1, max 1). `min_processes=0` starts processes only on
    demand; `min_processes=0, max_processes=0` switches the job off. `encode`/`decode`: True uses
    `self.encode`/`self.decode`, a string names another method of the class.
    `exceptions=True` answers a raising job with WORK_EXCEPTION carrying `"<Type>: <message>"`
    instead of WORK_FAIL: only for clients that all enable exceptions (docs/protocol.md).
    `concurrency=N` lets each process hold N jobs at once: an `async def` method runs them as
    tasks of one event loop, a plain one on N threads (docs/concurrency.md).
    """
    given = {
        key: value
        for key, value in (
            ("min_processes", min_processes),
            ("max_processes", max_processes),
            ("process_group", process_group),
            ("encode", encode),
            ("decode", decode),
            ("timeout", timeout),
            ("max_jobs_per_process", max_jobs_per_process),
            ("worker_backend", worker_backend),
            ("exceptions", exceptions),
            ("concurrency", concurrency),
        )
        if value is not None
    }

    def mark(method: F) -> F:
        setattr(method, JOB_MARKER, JobMarker(given))
        return method

    if func is not None:
        return mark(func)
    return mark


def job_marker(obj: object) -> JobMarker | None:
    """The marker `@job` left on a function, if any."""
    marker = getattr(obj, JOB_MARKER, None)
    return marker if isinstance(marker, JobMarker) else None


class Worker:
    """Base class of worker classes; one instance per class is built in the master, then forked.

    gearman-driver calls `cls(server=<server string>, **options)` where options are
    `worker_options["GLOBAL"]` updated with `worker_options["<module>.<Class>"]`.
    """

    prefix: ClassVar[str | Callable[..., str] | None] = None
    default_attributes: ClassVar[Mapping[str, Any]] = {}
    override_attributes: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, *, server: str, **options: Any) -> None:
        self.server = server
        self.options = options

    def job_prefix(self) -> str:
        """`prefix` (attribute or method) or `"<module>.<Class>."` by default."""
        prefix = getattr(self, "prefix", None)
        if prefix is None:
            return f"{type(self).__module__}.{type(self).__qualname__}."
        if callable(prefix):
            return str(prefix())
        return str(prefix)

    def begin(self, job: Any, workload: Any) -> None:
        """Called before every job (hook)."""

    def end(self, job: Any, workload: Any) -> None:
        """Called after every job, also when it raised (hook)."""

    def process_name(self, orig: str, job_name: str) -> str | None:
        """A process title for this job's processes, or None for `gearman-driver: <job name>`."""
        return None

    def encode(self, result: Any) -> Any:
        """Turns a job's return value into bytes/str; used by `@job(encode=True)`."""
        return result

    def decode(self, workload: bytes) -> Any:
        """Turns the raw workload into what the job method sees; used by `@job(decode=True)`."""
        return workload
