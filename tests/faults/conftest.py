"""GD_FAULT_BACKEND=pygearman|native runs the whole fault suite on one worker backend."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
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


@pytest.fixture
def open_home() -> Iterator[Path]:
    """A temporary directory other users can read (tmp_path is root's, mode 0700), for a
    daemon or a client that runs as nobody; removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="gd-faults-nobody-", dir="/tmp"))
    home.chmod(0o755)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)
