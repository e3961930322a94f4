"""Run the real `gearman-driver` daemon in tests, find its children, and stop it by pid."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.gearmand_util import admin, wait_for

FIXTURES = Path(__file__).parent / "fixtures"


def children_of(pid: int) -> list[int]:
    """Direct children of a process, from /proc (Linux)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def cpu_seconds(pid: int) -> float:
    """CPU time of one process (not its children): the scheduler's nanosecond count from
    /proc/<pid>/schedstat where the kernel keeps it, else utime + stime from /proc/<pid>/stat
    (clock ticks: 10 ms steps, too coarse for a fraction of a percent over a few seconds)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
        return ticks / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class DriverProcess:
    """One `gearman-driver` under test: its config, its log, its pid."""

    def __init__(self, tmp_path: Path, gearmand_port: int | list[int], config: dict[str, Any],
                 *args: str, name: str = "driver", env: dict[str, str] | None = None) -> None:
        ports = gearmand_port if isinstance(gearmand_port, list) else [gearmand_port]
        self.port = ports[0]
        self.tmp_path = tmp_path
        base: dict[str, Any] = {
            "server": ",".join(f"127.0.0.1:{p}" for p in ports),
            "lib": [str(FIXTURES)],
            "console_port": 0,
            "interval": 1,
            "loglevel": "DEBUG",
            "graceful_timeout": 10,
        }
        base.update(config)
        self.config_path = tmp_path / f"{name}.yml"
        self.config_path.write_text(json.dumps(base))
        self.log_path = tmp_path / f"{name}.log"
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.wrapper: list[str] = []  # e.g. prlimit/setpriv words run before the daemon

    def command(self) -> list[str]:
        return [*self.wrapper, sys.executable, "-m", "gearman_driver.cli", "--configfile",
                str(self.config_path), *self.args]

    def start(self) -> DriverProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=str(self.tmp_path),
                                     env=self.env)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rewrite_config(self, config: dict[str, Any]) -> None:
        """Change the config file (keeping the test's base keys), e.g. before a SIGHUP."""
        current = json.loads(self.config_path.read_text())
        current.update(config)
        self.config_path.write_text(json.dumps(current))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        return [p for p in children_of(self.pid) if alive(p)]

    def workers(self, port: int | None = None) -> list[tuple[str, list[str]]]:
        """(client id, functions) of this driver's workers registered at gearmand."""
        result = []
        for line in admin(port or self.port, "workers"):
            tokens = line.split()
            if ":" not in tokens[3:] and len(tokens) < 4:
                continue
            try:
                colon = tokens.index(":", 3)
            except ValueError:
                continue
            client_id = " ".join(tokens[2:colon])
            parts = client_id.split(":")
            if len(parts) >= 4 and parts[2] == str(self.pid):
                result.append((client_id, tokens[colon + 1:]))
        return result

    def registered(self, function: str, port: int | None = None) -> int:
        return sum(1 for _, functions in self.workers(port) if function in functions)

    def wait_registered(self, function: str, count: int, timeout: float = 15.0,
                        port: int | None = None) -> bool:
        def done() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gearman-driver exited ({self.proc.returncode}):\n"
                                     + self.log()[-3000:])
            return self.registered(function, port) == count

        return wait_for(done, timeout)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the master and any child it left (by pid)."""
        if self.proc is None:
            return None
        kids = children_of(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for kid in kids:
            if alive(kid):
                try:
                    os.kill(kid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 60.0
            ) -> subprocess.CompletedProcess[str]:
    """Run `gearman-driver` to completion (e.g. --check-config) and capture its output."""
    return subprocess.run([sys.executable, "-m", "gearman_driver.cli", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def keys(self) -> list[str]:
        """The sequence of state messages (READY/RELOADING/STOPPING), in order."""
        order: list[str] = []
        for message in self.drain():
            for key in ("READY", "RELOADING", "STOPPING"):
                if key in message:
                    order.append(key)
        return order

    def statuses(self) -> list[str]:
        return [m["STATUS"] for m in self.drain() if "STATUS" in m]

    def wait_keys(self, expected: list[str], timeout: float = 15) -> bool:
        return wait_for(lambda: self.keys()[:len(expected)] == expected, timeout)
