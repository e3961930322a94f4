"""GD_FAULT_BACKEND=pygearman|native runs the whole fault suite on one worker backend."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.driver_util import DriverProcess


@pytest.fixture
def driver_factory(driver_factory: Callable[..., DriverProcess]) -> Callable[..., DriverProcess]:
    backend = os.environ.get("GD_FAULT_BACKEND")
    if not backend:
        return driver_factory

    def make(port: int | list[int], config: dict[str, Any], *args: str,
             name: str = "driver") -> DriverProcess:
        return driver_factory(port, {"worker_backend": backend, **config}, *args, name=name)

    return make
