"""What every benchmark shares: figures with spread, progress, a private gearmand, admin polling.

Every process a benchmark starts is stopped by pid in a `finally`; nothing here looks processes
up by name.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.gearmand_util import start_gearmand, stop_gearmand

ROOT = Path(__file__).resolve().parents[1]
WORKERS_DIR = ROOT / "bench" / "workers"
PYTHON = sys.executable
_T0 = time.monotonic()


def progress(message: str) -> None:
    """One line on stderr, with the seconds since the run began."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Figure:
    """One measured quantity over its repeats; `None` values mean "could not be measured"."""

    label: str
    unit: str
    values: list[float] = field(default_factory=list)
    note: str = ""

    def add(self, value: float | None) -> None:
        if value is not None:
            self.values.append(value)

    @property
    def ok(self) -> bool:
        return bool(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else float("nan")

    def cell(self) -> str:
        """`median (min–max)` or n/a."""
        if not self.values:
            return "n/a"
        if len(self.values) == 1:
            return fmt(self.median)
        return f"{fmt(self.median)} ({fmt(self.lo)}–{fmt(self.hi)})"


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    magnitude = abs(value)
    if value == int(value) and magnitude < 1000:
        return str(int(value))
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


@dataclass
class Section:
    """What one benchmark hands the report: tables of figures, prose, plots, headline rows."""

    name: str
    title: str
    intro: str = ""
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    headline: list[Headline] = field(default_factory=list)


@dataclass
class Headline:
    """One row of the headline table: a figure against its same-run baseline and target."""

    what: str
    figure: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None

    def row(self) -> list[str]:
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.2f}"
        met = {True: "met", False: "**missed**", None: "n/a"}[self.met]
        return [self.what, self.figure, self.baseline, ratio, self.target, met]


def ratio(a: Figure, b: Figure) -> float | None:
    if not a.ok or not b.ok or b.median == 0:
        return None
    return a.median / b.median


# -- processes ------------------------------------------------------------------------------

def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """Signal them all first, then reap each: N processes stop in one timeout, not N."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def kill_pids(pids: list[int]) -> None:
    """SIGKILL leftovers (children a master did not take with it), by pid."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def smaps(pid: int) -> dict[str, int]:
    """`/proc/<pid>/smaps_rollup` in kB (empty if the process is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def pss_mb(pids: list[int], key: str = "Pss") -> float:
    return sum(smaps(pid).get(key, 0) for pid in pids) / 1024.0


def uss_mb(pid: int) -> float:
    """The process's own pages (USS = Private_Clean + Private_Dirty), in MB."""
    return pss_mb([pid], "Private_Clean") + pss_mb([pid], "Private_Dirty")


def stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP): it writes nothing more, so it can be
    measured. A process that is gone is not stopped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


# -- gearmand -------------------------------------------------------------------------------

@contextmanager
def private_gearmand(tmp: Path) -> Iterator[int]:
    """A gearmand of our own on a free loopback port, stopped by pid afterwards."""
    proc, port = start_gearmand(tmp / "gearmand")
    try:
        yield port
    finally:
        stop_gearmand(proc)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gd-bench-") as name:
        yield Path(name)


class Admin:
    """A persistent text-admin connection: cheap enough to poll every few milliseconds."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lines(self, command: str) -> list[str]:
        self.sock.sendall(command.encode() + b"\n")
        while True:
            end = self.buf.find(b"\n.\n")
            if self.buf.startswith(b".\n"):
                self.buf = self.buf[2:]
                return []
            if end >= 0:
                text, self.buf = self.buf[:end], self.buf[end + 3:]
                return text.decode(errors="replace").splitlines()
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("gearmand closed the admin connection")
            self.buf += chunk

    def status(self) -> dict[str, tuple[int, int, int]]:
        """{function: (total, running, available workers)}."""
        table: dict[str, tuple[int, int, int]] = {}
        for line in self.lines("status"):
            parts = line.split("\t")
            if len(parts) == 4:
                table[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
        return table

    def queued(self, function: str) -> int:
        return self.status().get(function, (0, 0, 0))[0]

    def workers(self, function: str) -> list[str]:
        """Client ids of the connections that registered `function`."""
        ids = []
        for line in self.lines("workers"):
            head, sep, functions = line.partition(" : ")
            if sep and function in functions.split():
                ids.append(" ".join(head.split()[2:]))
        return ids

    def registered(self, function: str, master_pid: int | None = None) -> int:
        """How many workers registered `function` (those of one driver, if master_pid)."""
        ids = self.workers(function)
        if master_pid is None:
            return len(ids)
        return sum(1 for cid in ids if cid.split(":")[2:3] == [str(master_pid)])


@dataclass
class Context:
    """How a run goes: quick or full, how many repeats, where scratch files and plots go."""

    quick: bool
    reps: int
    tmp: Path
    plot_dir: Path


def driver_workers(admin: Admin, master_pid: int) -> int:
    """How many connections with functions belong to the driver with this master pid."""
    count = 0
    for line in admin.lines("workers"):
        head, sep, functions = line.partition(" : ")
        cid = " ".join(head.split()[2:])
        if sep and functions.strip() and cid.split(":")[2:3] == [str(master_pid)]:
            count += 1
    return count
