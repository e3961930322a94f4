"""Worker backends: the Gearman protocol's worker side behind one seam (see base.py)."""

from __future__ import annotations

import importlib

from gearman_driver.child.backends.base import (
    BackendHooks,
    GearmanJob,
    JobResult,
    JobRunner,
    Server,
    WorkerBackend,
)

BACKENDS = {
    "pygearman": "gearman_driver.child.backends.pygearman_backend:PygearmanBackend",
    "native": "gearman_driver.child.backends.native:NativeBackend",
}


def backend_class(name: str) -> type[WorkerBackend]:
    """The backend class registered under `name` (imported lazily: only the one in use loads)."""
    module_name, _, attr = BACKENDS[name].partition(":")
    cls: type[WorkerBackend] = getattr(importlib.import_module(module_name), attr)
    return cls


__all__ = [
    "BACKENDS",
    "BackendHooks",
    "GearmanJob",
    "JobResult",
    "JobRunner",
    "Server",
    "WorkerBackend",
    "backend_class",
]
