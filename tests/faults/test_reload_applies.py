"""A reload that answers OK applied every change it accepted (issue 21, items 6 and 7).

Found before: a reload that changed `wanted` or `pidfile` answered OK and applied neither; a
reload after deploying new code kept running the old code when the new file kept its old
mtime, or when the changed module was a helper in `lib` outside `namespaces`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.faults.faultutil import console_config
from tests.faults.workercode import write_module
from tests.gearmand_util import TestClient, wait_for

pytestmark = pytest.mark.slow

VERSIONED = """
    from gearman_driver import Worker, job
    import helpers.version

    class Versioned(Worker):
        prefix = "vs."

        @job
        def which(self, job, workload):
            return "code {} helper {}".format(CODE, helpers.version.VERSION)

    CODE = "{code}"
"""

HELPER = """
    VERSION = "{version}"
"""


def reload(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gearman_driver.cli", "reload", "--server",
                           f"127.0.0.1:{port}", "--timeout", "60"], capture_output=True,
                          text=True, timeout=90)


def rewrite_keeping_mtime(path: Path, text: str) -> None:
    """A deploy that keeps modification times (rsync -t, tar, a package of the same build)."""
    stat = path.stat()
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def which(gearmand: int) -> bytes:
    with TestClient(gearmand) as client:
        return client.submit("vs.which", b"").result


def start(tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess],
          **config: object) -> tuple[DriverProcess, int, Path, Path]:
    lib = tmp_path / "lib"
    code = write_module(lib, "versioned.mod", VERSIONED.replace("{code}", "1"))
    helper = write_module(lib, "helpers.version", HELPER.replace("{version}", "1"))
    port, console_keys = console_config()
    driver = driver_factory(gearmand, {"namespaces": ["versioned"], "lib": [str(lib)],
                                       **console_keys, **config})
    assert driver.wait_registered("vs.which", 1)
    assert which(gearmand) == b"code 1 helper 1"
    return driver, port, code, helper


def test_new_code_with_its_old_mtime_is_loaded(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver, port, code, _ = start(tmp_path, gearmand, driver_factory)
    rewrite_keeping_mtime(code, code.read_text().replace('CODE = "1"', 'CODE = "2"'))
    done = reload(port)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: which(gearmand) == b"code 2 helper 1", 60), driver.log()[-3000:]
    assert "worker code changed (versioned.mod)" in driver.log()


def test_a_changed_helper_in_lib_outside_the_namespaces_is_loaded(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver, port, _, helper = start(tmp_path, gearmand, driver_factory)
    rewrite_keeping_mtime(helper, helper.read_text().replace('"1"', '"2"'))
    done = reload(port)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: which(gearmand) == b"code 1 helper 2", 60), driver.log()[-3000:]
    assert "worker code changed (helpers.version)" in driver.log()


def test_a_new_module_in_a_namespace_is_loaded(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver, port, code, _ = start(tmp_path, gearmand, driver_factory)
    write_module(code.parent.parent, "versioned.extra", """
        from gearman_driver import Worker, job

        class Extra(Worker):
            prefix = "vs."

            @job
            def extra(self, job, workload):
                return b"extra"
    """)
    done = reload(port)
    assert done.returncode == 0, done.stderr
    assert driver.wait_registered("vs.extra", 1, timeout=60)


def test_a_changed_wanted_is_applied(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    lib = tmp_path / "lib"
    write_module(lib, "choose.only_a", "def wanted(name):\n    return not name.endswith('b')\n")
    write_module(lib, "choose.every", "def wanted(name):\n    return True\n")
    for name in ("a", "b"):
        write_module(lib, f"twojobs.{name}", f"""
            from gearman_driver import Worker, job

            class Job{name.upper()}(Worker):
                prefix = "two."

                @job
                def {name}(self, job, workload):
                    return b"{name}"
        """)
    port, console_keys = console_config()
    driver = driver_factory(gearmand, {"namespaces": ["twojobs"], "lib": [str(lib)],
                                       "wanted": "choose.only_a:wanted", **console_keys})
    assert driver.wait_registered("two.a", 1)
    assert driver.registered("two.b") == 0
    driver.rewrite_config({"wanted": "choose.every:wanted"})
    done = reload(port)
    assert done.returncode == 0, done.stderr
    assert driver.wait_registered("two.b", 1, timeout=60), driver.log()[-3000:]
    assert "wanted changed" in driver.log()


def test_a_new_pidfile_is_taken_and_the_old_one_let_go(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    old, new = tmp_path / "old.pid", tmp_path / "new.pid"
    driver, port, _, _ = start(tmp_path, gearmand, driver_factory, pidfile=str(old))
    assert old.read_text() == f"{driver.pid}\n"
    driver.rewrite_config({"pidfile": str(new)})
    done = reload(port)
    assert done.returncode == 0, done.stderr
    assert new.read_text() == f"{driver.pid}\n"
    assert not old.exists()
    # a second daemon on the new pid file is refused: the lock moved with it
    other = subprocess.run([sys.executable, "-m", "gearman_driver.cli", "--configfile",
                            str(driver.config_path), "--console_port", "0"],
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 75, other.stderr
    driver.stop()
    assert not new.exists()


def test_an_unusable_pidfile_refuses_the_reload(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    old = tmp_path / "old.pid"
    driver, port, _, _ = start(tmp_path, gearmand, driver_factory, pidfile=str(old))
    missing = tmp_path / "no-such-dir" / "gd.pid"
    driver.rewrite_config({"pidfile": str(missing)})
    done = reload(port)
    assert done.returncode == 1
    assert f": pidfile {missing}: directory {missing.parent} does not exist; running on the " \
           "previous configuration" in done.stderr, done.stderr
    assert old.read_text() == f"{driver.pid}\n"


def test_daemonize_cannot_change_while_running(
        tmp_path: Path, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver, port, _, _ = start(tmp_path, gearmand, driver_factory)
    driver.rewrite_config({"daemonize": True})
    done = reload(port)
    assert done.returncode == 1
    assert "daemonize: cannot change while gearman-driver runs; restart it to apply the new " \
           "value; running on the previous configuration" in done.stderr, done.stderr
    assert which(gearmand) == b"code 1 helper 1"
