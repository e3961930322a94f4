"""Start the things we measure: the gearman-driver daemon, bare Python workers, C workers.

The daemon runs as operators run it (`python -m gearman_driver.cli --configfile X`, config in
JSON, which is YAML); bare workers are one interpreter each, the way supervisord runs workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    ROOT,
    WORKERS_DIR,
    kill_pids,
    stop_all,
)
from tests.driver_util import children_of


class Daemon:
    """One gearman-driver master; `stop()` takes it and every child it had down, by pid."""

    def __init__(self, tmp: Path, port: int, namespace: str, *, name: str = "driver",
                 jobs: dict[str, tuple[int, int]] | None = None, env: dict[str, str] | None = None,
                 **settings: Any) -> None:
        config: dict[str, Any] = {
            "server": f"127.0.0.1:{port}",
            "lib": [str(WORKERS_DIR)],
            "namespaces": [namespace],
            "console_port": 0,
            "interval": 1,
            "loglevel": "WARNING",
            "graceful_timeout": 10,
        }
        if jobs:
            config["job_runtime_attributes"] = {
                job: {"min_processes": lo, "max_processes": hi} for job, (lo, hi) in jobs.items()
            }
        config.update(settings)
        tmp.mkdir(parents=True, exist_ok=True)
        self.config_path = tmp / f"{name}.yml"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = tmp / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._kids: set[int] = set()
        self.wrapper: list[str] = []  # words run before the daemon (ip netns exec NS)

    def start(self) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [*self.wrapper, PYTHON, "-m", "gearman_driver.cli", "--configfile",
                 str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(ROOT), env=self.env)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        kids = children_of(self.pid)
        self._kids.update(kids)
        return kids

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"gearman-driver exited ({self.proc and self.proc.returncode}):"
                               f"\n{self.log()}")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        self.children()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        kill_pids(sorted(self._kids))
        return self.proc.returncode

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProcessGroup:
    """Several plain processes (bare Python or C workers), stopped together by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=str(ROOT))
        self.procs.append(proc)
        return proc

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        stop_all(self.procs)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bare_worker_argv(port: int, module: str, function: str, backend: str = "pygearman",
                     client_id: str = "") -> list[str]:
    """A bare worker: one interpreter that imports `module` and serves one function."""
    argv = [PYTHON, "-m", "bench.bare_worker", "--port", str(port), "--module", module,
            "--function", function, "--backend", backend]
    return argv + (["--client-id", client_id] if client_id else [])


def minimal_worker_argv(port: int, function: str) -> list[str]:
    """The minimal blocking Python loop (bench/minimal_worker.py): the floor for a Python worker."""
    return [PYTHON, "-m", "bench.minimal_worker", "--port", str(port), "--function", function]


def c_worker_argv(port: int, function: str) -> list[str]:
    """libgearman's worker: with no command it echoes the workload back (no fork per job)."""
    return ["gearman", "-w", "-h", "127.0.0.1", "-p", str(port), "-f", function]
