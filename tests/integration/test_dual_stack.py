"""A server name with an IPv6 and an IPv4 address: workers try each address in turn.

Debian's /etc/hosts maps `localhost` to both 127.0.0.1 and ::1, and `localhost:4730` is the
default server, while gearmand often listens on one family only. Here the daemon runs in a
private mount namespace (`unshare -m`, root) with a test-owned file bind-mounted over
/etc/hosts, so `gdtest-dual` resolves to ::1 first and 127.0.0.1 second for it alone: a real
daemon, a real gearmand, the system resolver. gearmand listens on one of the two addresses.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.gearmand_util import TestClient, admin, start_gearmand, stop_gearmand, wait_for

NAME = "gdtest-dual"
HOSTS = f"::1 {NAME}\n127.0.0.1 {NAME}\n"
PAIR_MINIMUM = {"alpha.opts": 2, "alpha.work": 1, "beta.opts": 1}


class NamespacedDriver(DriverProcess):
    """gearman-driver started behind `unshare -m` + a bind mount of our hosts file; `unshare`
    execs the shell, which execs the daemon, so the pid is the daemon's."""

    def __init__(self, tmp_path: Path, hosts: Path, **kwargs: object) -> None:
        super().__init__(tmp_path, **kwargs)  # type: ignore[arg-type]
        self.hosts = hosts

    def command(self) -> list[str]:
        inner = " ".join(shlex.quote(word) for word in super().command())
        return ["unshare", "-m", "sh", "-c",
                f"mount --bind {shlex.quote(str(self.hosts))} /etc/hosts && exec {inner}"]


@pytest.fixture(params=["127.0.0.1", "::1"])
def single_family_gearmand(request: pytest.FixtureRequest, tmp_path: Path
                           ) -> Iterator[tuple[str, int]]:
    """gearmand on one address of the name only: (that address, port)."""
    proc, port = start_gearmand(tmp_path / "gearmand", listen=request.param)
    try:
        yield request.param, port
    finally:
        stop_gearmand(proc)


def registered(host: str, port: int, pid: int) -> dict[str, int]:
    """Functions of this daemon's workers at gearmand, with how many processes have each."""
    counts: dict[str, int] = {}
    for line in admin(port, "workers", host=host):
        tokens = line.split()
        if ":" not in tokens or f":{pid}:" not in line:
            continue
        for function in tokens[tokens.index(":") + 1:]:
            counts[function] = counts.get(function, 0) + 1
    return counts


@pytest.mark.parametrize("backend", ["native", "pygearman"])
def test_every_address_of_the_name_is_tried(single_family_gearmand: tuple[str, int],
                                            backend: str, tmp_path: Path) -> None:
    host, port = single_family_gearmand
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    driver = NamespacedDriver(
        tmp_path, hosts, gearmand_port=port,
        config={"namespaces": ["tw.pair"], "server": f"{NAME}:{port}",
                "worker_backend": backend},
    ).start()
    try:
        assert wait_for(lambda: registered(host, port, driver.pid) == PAIR_MINIMUM, 20), (
            registered(host, port, driver.pid), driver.log()[-3000:])
        with TestClient(port, host=host) as client:
            assert client.submit("alpha.work", b"0:dual").result == b"0:dual"
        assert "cannot connect" not in driver.log()
    finally:
        driver.stop()
