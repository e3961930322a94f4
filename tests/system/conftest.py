"""Fixtures of the system tier: the .deb built from this checkout, the cached root tree, and a
booted container that is always shut down by pid, whatever the test's outcome."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.test_deb import build
from tests.system.container import Container
from tests.system.rootfs import cached_tree

TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "mount", "dpkg-deb")


@pytest.fixture(scope="session")
def system_host() -> None:
    if os.geteuid() != 0:
        pytest.fail("tests/system boots containers with systemd-nspawn: run as root")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"tests/system needs {', '.join(missing)} "
                    "(apt-get install systemd-container debootstrap; scripts/test does)")


@pytest.fixture(scope="session")
def deb(system_host: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def tree(deb: Path) -> Path:
    path, built = cached_tree(deb)
    print(f"\nroot tree {path}: " + (f"built in {built:.0f} s" if built else "from the cache"))
    return path


@pytest.fixture(scope="module")
def container(tree: Path, deb: Path) -> Iterator[Container]:
    """A booted bookworm with the .deb copied to /root (not installed: the journey does it)."""
    box = Container(tree)
    try:
        box.boot()
        shutil.copy(deb, box.path("/root") / deb.name)
        yield box
    finally:
        box.destroy()
