"""The network tier's fixtures: labs of namespaces (netlab.py), and drivers run inside them,
on both worker backends. Everything is stopped by pid and deleted at teardown, even when a
test fails; namespaces left by runs that died are removed first."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.driver_util import DriverProcess
from tests.network.netlab import Host, Lab, clean_stale

CONSOLE_PORT = 47300  # in the driver's namespace: nobody else listens there
METRICS_PORT = 9731
FUNCTION = "net.work"


@pytest.fixture(scope="session", autouse=True)
def _no_stale_namespaces() -> None:
    clean_stale()


@pytest.fixture(params=["native", "pygearman"])
def worker_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Callable[[int], Lab]]:
    """make(hosts) -> a Lab with that many gearmand hosts (gearmand not started yet)."""
    labs: list[Lab] = []

    def make(hosts: int) -> Lab:
        created = Lab(tmp_path, hosts)
        labs.append(created)
        return created.create()

    try:
        yield make
    finally:
        for made in labs:
            made.destroy()


class NetDriver(DriverProcess):
    """A driver in the lab's driver namespace, with its console and metrics endpoint there."""

    lab: Lab

    def console(self, command: str, timeout: float = 5.0) -> list[str]:
        return self.lab.console(command, CONSOLE_PORT, timeout)

    def servers(self) -> list[list[str]]:
        return [line.split() for line in self.console("servers")]

    def metrics(self) -> dict[str, float]:
        return self.lab.scrape(METRICS_PORT)

    def records(self) -> list[str]:
        """Every run of net.work so far, one id per run (duplicates included)."""
        path = self.tmp_path / "record.txt"
        return path.read_text().split() if path.exists() else []


#: worker_backend "slots": the native backend's slots engine (net.work with 4 slots a process)
SLOTS = 4


@pytest.fixture
def net_driver(tmp_path: Path, worker_backend: str) -> Iterator[Callable[..., NetDriver]]:
    """start(lab, config, hosts=None, env=None) -> a NetDriver serving net.work on `hosts`
    (default: all of the lab's); stopped by pid at teardown."""
    started: list[NetDriver] = []

    def start(lab: Lab, config: dict[str, Any], hosts: list[Host] | None = None,
              env: dict[str, str] | None = None) -> NetDriver:
        if worker_backend == "slots":
            attributes = config.get("job_runtime_attributes", {})
            config = {**config, "job_runtime_attributes": {
                **attributes, FUNCTION: {**attributes.get(FUNCTION, {}), "concurrency": SLOTS}}}
        base: dict[str, Any] = {
            "server": ",".join(host.server for host in hosts or lab.hosts),
            "namespaces": ["tw.net"],
            "worker_backend": "native" if worker_backend == "slots" else worker_backend,
            "console_port": CONSOLE_PORT,
            "metrics_port": METRICS_PORT,
            "interval": 1,
            "worker_options": {"tw.net.jobs.Net": {"record_file": str(tmp_path / "record.txt")}},
        }
        driver = NetDriver(tmp_path, 0, {**base, **config}, name=f"driver{len(started)}",
                           env=env)
        driver.lab = lab
        driver.wrapper = ["ip", "netns", "exec", lab.driver_ns]
        started.append(driver)
        driver.start()
        return driver

    try:
        yield start
    finally:
        for driver in started:
            driver.stop()


def limits(low: int, high: int) -> dict[str, Any]:
    return {"job_runtime_attributes": {FUNCTION: {"min_processes": low, "max_processes": high}}}


def dump(value: Any) -> str:
    return json.dumps(value, indent=1)
