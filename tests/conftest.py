"""Shared fixtures: a real gearmand on a free loopback port, and drivers stopped by pid."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.driver_util import DriverProcess, NotifySocket
from tests.gearmand_util import start_gearmand, stop_gearmand


@pytest.fixture
def gearmand(tmp_path: Path) -> Iterator[int]:
    """A private gearmand; yields its port."""
    proc, port = start_gearmand(tmp_path / "gearmand")
    try:
        yield port
    finally:
        stop_gearmand(proc)


@pytest.fixture
def worker_backend() -> str | None:
    """The worker backend drivers use; None keeps the configured default. Test modules that
    must hold for every backend override this fixture with params."""
    return None


@pytest.fixture
def driver_factory(tmp_path: Path, worker_backend: str | None
                   ) -> Iterator[Callable[..., DriverProcess]]:
    """Start `gearman-driver` daemons; every one is stopped at teardown."""
    started: list[DriverProcess] = []

    def make(port: int | list[int], config: dict[str, Any], *args: str,
             name: str = "driver", env: dict[str, str] | None = None) -> DriverProcess:
        if worker_backend is not None:
            config = {"worker_backend": worker_backend, **config}
        driver = DriverProcess(tmp_path, port, config, *args, name=name, env=env).start()
        started.append(driver)
        return driver

    try:
        yield make
    finally:
        for driver in started:
            driver.stop()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """A stand-in for systemd's NOTIFY_SOCKET; pass env={"NOTIFY_SOCKET": str(notify.path)}."""
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        yield sock
    finally:
        sock.sock.close()
