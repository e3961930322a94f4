"""gearman-driver: runs and scales Gearman worker processes from one YAML file.

    from gearman_driver import Worker, job

    class Images(Worker):
        @job(min_processes=1, max_processes=8)
        def scale(self, job, workload):
            return workload.upper()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gearman_driver.api import Worker, job
from gearman_driver.version import __version__

if TYPE_CHECKING:
    from gearman_driver.master.driver import Driver


def __getattr__(name: str) -> Any:
    # The master's machinery loads only when asked for: worker modules import this package too.
    if name == "Driver":
        from gearman_driver.master.driver import Driver

        return Driver
    raise AttributeError(name)


__all__ = ["Driver", "Worker", "__version__", "job"]
