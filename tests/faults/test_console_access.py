"""The console is not a local root shell (issue 12, item 7): only root and the daemon's own
user may change anything, over TCP and the unix socket; everyone may read. The other users
are real: clients run as `nobody` through setpriv, and the daemon as root or as nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.faults.faultutil import NOBODY, as_nobody, console, console_config, record_figures
from tests.gearmand_util import wait_for

JOB = "f.slow.sleep"
CHANGES = [f"set_processes {JOB} 0 0", f"set_min_processes {JOB} 0",
           f"set_max_processes {JOB} 1", "kill {pid}", f"killall {JOB}", "killall *",
           "reload", "shutdown"]
READS = ["status", f"show {JOB}", f"ps {JOB}", "help"]
DENIED = ("ERR permission_denied: uid 65534 may not change anything; only root, the "
          "daemon's user (uid {me}) and console_allow_users may")


def client(target: list[str], command: str, *, user: int | None) -> list[str]:
    """One command through gearman-driver-console, as `user` (None: as root, this process)."""
    argv = [sys.executable, "-m", "gearman_driver.console.client", "--timeout", "5", *target,
            *command.split()]
    result = subprocess.run(as_nobody(*argv) if user == NOBODY else argv, cwd="/",
                            capture_output=True, text=True, timeout=30)
    assert result.returncode in (0, 1), result.stderr
    return result.stdout.splitlines()


def _driver(home: Path, gearmand: int, *wrapper: str) -> tuple[DriverProcess, int, Path]:
    """A driver with a TCP console and a unix socket in `home`, registered; its console
    port and socket path."""
    cport, cfg = console_config()
    sock = home / "console.sock"
    driver = DriverProcess(home, gearmand, {"namespaces": ["tw.faults.slow"], **cfg,
                                            "console_socket": str(sock)})
    driver.wrapper = list(wrapper)
    driver.start()
    assert driver.wait_registered(JOB, 1)
    assert wait_for(sock.exists, 10)
    return driver, cport, sock


def _targets(cport: int, sock: Path) -> dict[str, list[str]]:
    return {"tcp": ["--server", f"127.0.0.1:{cport}"], "unix": ["--socket", str(sock)]}


def _job_row(cport: int) -> list[str]:
    (row,) = [line.split() for line in console(cport, "status") if line.startswith(JOB)]
    return row


@pytest.mark.slow
def test_only_root_and_the_daemons_user_change_things(gearmand, open_home) -> None:
    driver, cport, sock = _driver(open_home, gearmand)
    try:
        sock.chmod(0o666)  # an operator opened the socket up: its file mode no longer guards it
        pid = driver.children()[0]
        targets = _targets(cport, sock)
        denied = DENIED.format(me=0)
        t0 = time.monotonic()
        refused = 0
        for transport, target in targets.items():
            for command in CHANGES:
                reply = client(target, command.format(pid=pid), user=NOBODY)
                assert reply == [denied], (transport, command, reply)
                refused += 1
            for command in READS:
                reply = client(target, command, user=NOBODY)
                assert reply and not reply[0].startswith("ERR"), (transport, command, reply)
        took = time.monotonic() - t0
        # nothing changed: the same process, the same limits, the daemon running
        assert driver.children() == [pid]
        assert _job_row(cport)[1:4] == ["1", "8", "1"]
        assert driver.proc is not None and driver.proc.poll() is None
        assert driver.log().count("permission_denied") == 0  # the log says "refused"
        assert driver.log().count(" refused: uid 65534 may not change anything") == refused
        # root may, on both transports
        for transport, target in targets.items():
            assert client(target, f"set_processes {JOB} 1 {3 if transport == 'tcp' else 4}",
                          user=None) == ["OK"], transport
        assert _job_row(cport)[1:3] == ["1", "4"]
        record_figures("console control as nobody vs root (daemon as root)", sent=0,
                       completed=0, failed=0, lost=0, recover_s=None, peak_rss_kb=None,
                       notes=f"{refused} changing commands from uid 65534 (TCP and unix "
                             f"socket) refused with `ERR permission_denied`, {len(READS) * 2} "
                             f"reads answered, {refused + len(READS) * 2} client runs in "
                             f"{took:.1f}s; root's set_processes OK on both transports; "
                             f"worker pid and limits unchanged by nobody")
    finally:
        driver.stop()


@pytest.mark.slow
def test_the_daemons_own_user_may_change_things(gearmand, open_home) -> None:
    os.chown(open_home, NOBODY, NOBODY)  # where the daemon, as nobody, makes its socket
    driver, cport, sock = _driver(open_home, gearmand, *as_nobody())
    try:
        for target in _targets(cport, sock).values():
            assert client(target, f"set_max_processes {JOB} 5", user=NOBODY) == ["OK"]
            assert client(target, f"set_max_processes {JOB} 6", user=None) == ["OK"]
    finally:
        driver.stop()


@pytest.mark.slow
def test_console_allow_users_opens_control_on_reload(gearmand, driver_factory) -> None:
    cport, cfg = console_config()
    driver = driver_factory(gearmand, {"namespaces": ["tw.faults.slow"], **cfg})
    assert driver.wait_registered(JOB, 1)
    target = ["--server", f"127.0.0.1:{cport}"]
    denied = [DENIED.format(me=0)]
    assert client(target, f"set_max_processes {JOB} 5", user=NOBODY) == denied
    # "*": anyone (Gearman::Driver's way); another user: nobody is refused again; nobody
    for allow, expected in ((["*"], ["OK"]), (["root", 4242], denied), (["nobody"], ["OK"])):
        driver.rewrite_config({"console_allow_users": allow})
        driver.signal(signal.SIGHUP)
        assert wait_for(lambda want=expected: client(
            target, f"set_max_processes {JOB} 5", user=NOBODY) == want, 15), \
            (allow, driver.log()[-2000:])
    assert _job_row(cport)[2] == "5"
