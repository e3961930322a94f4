"""Files and sockets the daemon creates at start-up: a bad one is one line and exit 73 (or 78
for the log file), never a traceback, and no symlink is followed (issue 12, items 9 and 10)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gearman_driver.paths import EX_CANTCREAT
from tests.driver_util import run_cli
from tests.faults.faultutil import record_figures
from tests.gearmand_util import free_port

EX_CONFIG = 78
SECRET = "root-only contents\n"


def _start(tmp_path: Path, **config: Any) -> subprocess.CompletedProcess[str]:
    """Run the daemon with no jobs and an unreachable gearmand: it must fail at start-up (a
    daemon that starts instead is killed after the timeout and the test fails)."""
    path = tmp_path / "bad.yml"
    path.write_text(json.dumps({"server": "127.0.0.1:1", "console_port": 0, **config}))
    try:
        return run_cli("--configfile", str(path), cwd=tmp_path, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gearman-driver started with {config}")


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gearman-driver: "), lines
    return lines[0]


def _planted_link(tmp_path: Path, name: str) -> tuple[Path, Path]:
    target = tmp_path / "secret"
    target.write_text(SECRET)
    target.chmod(0o600)
    link = tmp_path / name
    link.symlink_to(target)
    return link, target


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def _dir(tmp_path: Path) -> Path:
    path = tmp_path / "dir.pid"
    path.mkdir()
    return path


def _regular(tmp_path: Path) -> Path:
    path = tmp_path / "console.sock"
    path.write_text("not a socket\n")
    return path


# (case, config maker, expected exit status, expected words in the line)
CASES: list[tuple[str, Callable[[Path], dict[str, Any]], int, str]] = [
    ("pid file in a missing directory",
     lambda t: {"pidfile": str(t / "missing" / "gd.pid")}, EX_CANTCREAT,
     "directory {t}/missing does not exist"),
    ("pid file is a directory", lambda t: {"pidfile": str(_dir(t))}, EX_CANTCREAT,
     "pidfile {t}/dir.pid: is a directory"),
    ("pid file is a FIFO", lambda t: {"pidfile": str(_fifo(t))}, EX_CANTCREAT,
     "pidfile {t}/fifo: is a FIFO, expected a regular file"),
    ("pid file is a planted symlink",
     lambda t: {"pidfile": str(_planted_link(t, "gd.pid")[0])}, EX_CANTCREAT,
     "pidfile {t}/gd.pid: is a symbolic link (not followed)"),
    ("log file is a planted symlink",
     lambda t: {"logfile": str(_planted_link(t, "gd.log")[0])}, EX_CONFIG,
     "logfile: expected a file that can be opened for appending, got '{t}/gd.log' "
     "(is a symbolic link (not followed))"),
    ("console socket in a missing directory",
     lambda t: {"console_socket": str(t / "missing" / "c.sock")}, EX_CANTCREAT,
     "console_socket {t}/missing/c.sock: directory {t}/missing does not exist"),
    ("console socket path is a symlink",
     lambda t: {"console_socket": str(_planted_link(t, "c.sock")[0])}, EX_CANTCREAT,
     "console_socket {t}/c.sock: is a symbolic link, not a socket"),
    ("console socket path is a regular file",
     lambda t: {"console_socket": str(_regular(t))}, EX_CANTCREAT,
     "console_socket {t}/console.sock: is a regular file, not a socket"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_startup_path_is_one_line_and_a_documented_status(
        tmp_path: Path, case: tuple[str, Callable[[Path], dict[str, Any]], int, str]) -> None:
    name, make, status, words = case
    t0 = time.monotonic()
    result = _start(tmp_path, **make(tmp_path))
    took = time.monotonic() - t0
    line = _one_line(result)
    assert result.returncode == status, (result.returncode, line)
    assert words.format(t=tmp_path) in line, line
    secret = tmp_path / "secret"
    if secret.exists():  # the link's target is untouched
        assert secret.read_text() == SECRET
        assert oct(secret.stat().st_mode & 0o777) == oct(0o600)
    record_figures(f"start-up error: {name}", sent=0, completed=0, failed=0, lost=0,
                   recover_s=None, peak_rss_kb=None,
                   notes=f"exit {result.returncode} after {took:.2f}s: "
                         f"`{line.replace(str(tmp_path), '$DIR')}`")


@pytest.mark.slow
def test_console_port_in_use_is_one_line_and_exit_73(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen(1)
        t0 = time.monotonic()
        result = _start(tmp_path, console_port=port)
        took = time.monotonic() - t0
    line = _one_line(result)
    assert result.returncode == EX_CANTCREAT, (result.returncode, line)
    assert f"console_port {port} on 127.0.0.1: Address already in use" in line, line
    record_figures("start-up error: console port in use", sent=0, completed=0, failed=0,
                   lost=0, recover_s=None, peak_rss_kb=None,
                   notes=f"exit {result.returncode} after {took:.2f}s: `{line}`")
