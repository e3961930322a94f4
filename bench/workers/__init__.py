"""Worker code the benchmarks load: each `bw_*` package is one namespace for gearman-driver.

Each jobs module also has BARE_TASKS (function name -> callable(workload) -> bytes), which the
bare one-interpreter-per-process workers (bench.bare_worker, "the supervisord way") run.
"""

from typing import Any

from gearman_driver import Worker, job


def add_echo_jobs(cls: type[Worker], names: list[str]) -> None:
    """Give `cls` one `@job` method per name, each returning its workload (trivial jobs)."""
    for name in names:
        def method(self: Any, item: Any, workload: bytes) -> bytes:
            return workload

        method.__name__ = method.__qualname__ = name
        setattr(cls, name, job(method))
