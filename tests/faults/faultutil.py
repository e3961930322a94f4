"""Helpers for the fault suite: /proc figures of the master, a console client with short
timeouts, and the figures each scenario writes for docs/faults.md (env GD_FAULT_FIGURES)."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

from gearman_driver.console.client import query
from tests.gearmand_util import TestClient, free_port

FIGURES_ENV = "GD_FAULT_FIGURES"


def proc_status(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_kb(pid: int) -> int:
    return proc_status(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int:
    """The master's peak resident set (VmHWM): it only grows, so read it before stopping."""
    return proc_status(pid, "VmHWM")


def console(port: int, command: str, timeout: float = 1.0) -> list[str]:
    """One console command with a short timeout; the reply lines without the final `.`."""
    return query(f"127.0.0.1:{port}", command, timeout)


def console_config() -> tuple[int, dict[str, Any]]:
    port = free_port()
    return port, {"console_port": port}


NOBODY = 65534


def as_nobody(*command: str) -> list[str]:
    """Run `command` as user nobody (the tests run as root): RLIMIT_NPROC binds only a user
    without CAP_SYS_RESOURCE, and the console's access rules are about other users."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
            *command]


def user_processes(uid: int) -> int:
    """How many processes (threads included: RLIMIT_NPROC counts them) have this real uid."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            count += int(fields.get("Threads", "1"))
    return count


def kill_quietly(pid: int, signum: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False


def pick(pids: list[int], rng: random.Random) -> int | None:
    return rng.choice(pids) if pids else None


def started_count(log: str, job: str) -> int:
    """How many processes the master logged as started for `job`."""
    return sum(1 for line in log.splitlines()
               if "started process" in line and f" for {job} (" in line)


def record_figures(scenario: str, *, sent: int, completed: int, failed: int, lost: int,
                   recover_s: float | None, peak_rss_kb: int | None, notes: str = "",
                   **extra: Any) -> None:
    """Append one JSON line for bench/faults_figures.py when GD_FAULT_FIGURES is set."""
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    row = {"scenario": scenario, "sent": sent, "completed": completed, "failed": failed,
           "lost": lost, "recover_s": None if recover_s is None else round(recover_s, 3),
           "peak_rss_mb": None if peak_rss_kb is None else round(peak_rss_kb / 1024, 1),
           "notes": notes, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    with open(path, "a") as out:
        out.write(json.dumps(row) + "\n")


class SteadyLoad:
    """Foreground jobs submitted one after another from `clients` threads while a fault happens;
    `sent`, `completed` and `lost` (not completed with its own workload echoed back) after stop.
    """

    def __init__(self, port: int, function: str, clients: int = 2, delay: str = "0.05") -> None:
        self.port, self.function, self.delay = port, function, delay
        self.results: list[tuple[bytes, str, bytes]] = []
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(clients)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, worker: int) -> None:
        with TestClient(self.port, timeout=60) as client:
            i = 0
            while not self._done.is_set():
                payload = f"{self.delay}:{worker}-{i}".encode()
                outcome = client.submit(self.function, payload)
                self.results.append((payload, outcome.final, outcome.result))
                i += 1

    @property
    def sent(self) -> int:
        return len(self.results)

    @property
    def completed(self) -> int:
        return sum(1 for payload, final, result in self.results
                   if final == "complete" and result == payload)

    @property
    def lost(self) -> int:
        return self.sent - self.completed
