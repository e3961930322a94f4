"""A reload with a bad `console_socket` is refused and leaves both consoles as they were.

The driver listens on TCP and on a unix socket; a reload names a console socket in a missing
directory, at a path that is a regular file, or in a directory nobody may create files in
(/sys, even for root). Each reload must be refused with the key's file:line, and both consoles
must keep answering on their old addresses, with a client connected before the reload still
served after it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gearman_driver.console.client import Session, Target
from tests.driver_util import DriverProcess
from tests.faults.faultutil import console, console_config, record_figures
from tests.gearmand_util import wait_for

pytestmark = pytest.mark.slow

CASES = {
    "socket in a missing directory": lambda tmp: (tmp / "no-such-dir" / "c.sock",
                                                  "does not exist"),
    "socket path is a regular file": lambda tmp: (tmp / "plain-file", "is a regular file, "
                                                                      "not a socket"),
    "socket in an unwritable directory (/sys)": lambda tmp: (Path("/sys/gd-console.sock"),
                                                             "Operation not permitted"),
}


def unix_status(path: Path) -> list[str]:
    session = Session(Target(f"unix:{path}", path=str(path)), 1.0)
    try:
        return session.request("status")
    finally:
        session.close()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_console_socket_reload_is_refused_and_both_consoles_stay(
        case: str, gearmand: int, driver_factory: Callable[..., DriverProcess],
        tmp_path: Path) -> None:
    port, config = console_config()
    good = tmp_path / "console.sock"
    driver = driver_factory(gearmand, {"namespaces": ["tw.pair"], "console_socket": str(good),
                                       **config})
    assert driver.wait_registered("alpha.opts", 2) and driver.wait_registered("beta.opts", 1)
    bad, reason = CASES[case](tmp_path)
    if case.startswith("socket path is a regular file"):
        bad.write_text("keep me\n")
    before = sorted(driver.children())
    connected = Session(Target(f"127.0.0.1:{port}", "127.0.0.1", port), 2.0)
    try:
        assert any("alpha.opts" in line for line in connected.request("status"))
        driver.rewrite_config({"console_socket": str(bad)})
        started = time.monotonic()
        driver.signal(signal.SIGHUP)
        assert wait_for(lambda: "reload failed" in driver.log(), 10), driver.log()[-3000:]
        seconds = time.monotonic() - started
        line = next(x for x in driver.log().splitlines() if "reload failed" in x)
        assert f"reload failed: {driver.config_path}:" in line
        assert f": console_socket {bad}: " in line and reason in line, line
        assert line.endswith("; running on the previous configuration"), line
        assert "configuration reloaded" not in driver.log()
        assert any("alpha.opts" in x for x in connected.request("status"))  # same connection
    finally:
        connected.close()
    assert any("alpha.opts" in x for x in console(port, "status"))
    assert any("alpha.opts" in x for x in unix_status(good))
    assert good.is_socket()
    if case.startswith("socket path is a regular file"):
        assert bad.read_text() == "keep me\n"
    else:
        assert not bad.exists()
    assert sorted(driver.children()) == before
    assert driver.proc is not None and driver.proc.poll() is None
    assert "Traceback" not in driver.log()
    record_figures(f"console reload refused: {case}", sent=0, completed=0, failed=0, lost=0,
                   recover_s=seconds, peak_rss_kb=None,
                   notes=f"refused {seconds:.2f}s after SIGHUP with the key's file:line; TCP "
                         f"and unix consoles answered after it, a connection opened before it "
                         f"still served; {len(before)}/{len(before)} processes kept")
