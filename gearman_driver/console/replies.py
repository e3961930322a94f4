"""What the console's replies look like: the rows the master hands over, and Gearman::Driver's
wording and columns, byte for byte (existing operator scripts parse them). No I/O.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["JobRow", "ProcessRow", "ServerRow", "format_job_slots", "format_processes",
           "format_process_slots", "format_servers", "format_show", "format_status", "iso_utc",
           "printable_line"]

NEVER = "1970-01-01T00:00:00"


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as the console shows it; times are epoch seconds, 0.0 meaning never."""

    name: str
    min_processes: int
    max_processes: int
    processes: int
    last_run: float
    last_error: float
    last_error_msg: str


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """One process of a job; ``idle_for`` is None until it has finished a job."""

    pid: int
    busy: bool
    jobs_done: int
    idle_for: float | None
    slots: int = 1  # jobs it can hold at once (the job's concurrency)
    busy_slots: int = 0  # jobs it holds now


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One configured gearmand: ``HOST:PORT``, ``up``/``down``/``unknown``, and how many of
    this driver's worker processes it listed as connected at its last answer."""

    server: str
    state: str
    processes: int


def printable_line(text: str) -> str:
    """Fold line breaks and control characters into spaces so a value cannot break framing
    (a line holding only ``.``) or smuggle terminal escapes to an operator's screen."""
    folded = "".join(ch if ch.isprintable() else " " for ch in text)
    return folded.strip()


def iso_utc(epoch: float) -> str:
    """Gearman::Driver's timestamp format; 0.0 (never) prints as the epoch."""
    try:
        if epoch <= 0 or epoch != epoch:
            return NEVER
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(epoch)))
    except (OverflowError, ValueError, OSError):
        return NEVER


def _status_cells(row: JobRow) -> list[str]:
    """The seven columns; the message gets Gearman::Driver's ``ERROR: `` prefix when set."""
    message = printable_line(row.last_error_msg)
    return [
        printable_line(row.name),
        str(row.min_processes),
        str(row.max_processes),
        str(row.processes),
        iso_utc(row.last_run),
        iso_utc(row.last_error),
        f"ERROR: {message}" if message else "",
    ]


def format_status(rows: Sequence[JobRow]) -> list[str]:
    """One line per job sorted by name, byte for byte as Gearman::Driver prints it: the name
    padded to the longest, the three counts right-aligned to the widest (at least 1), the two
    times, then the message column unpadded - so a line without an error ends in two spaces."""
    ordered = sorted(rows, key=lambda r: r.name)
    cells = [_status_cells(r) for r in ordered]
    widths = [max([1, *(len(c[i]) for c in cells)]) for i in range(4)]
    return [
        "  ".join([c[0].ljust(widths[0]), *(c[i].rjust(widths[i]) for i in (1, 2, 3)), *c[4:]])
        for c in cells
    ]


def format_show(row: JobRow) -> str:
    """``show``'s first line: the status columns without any padding (Gearman::Driver's
    ``%s  %d  %d  %d  %s  %s  %s``), so it too ends in two spaces when there is no error."""
    return "  ".join(_status_cells(row))


def format_processes(rows: Sequence[ProcessRow]) -> list[str]:
    """``ps``: pid, idle/busy, jobs done, whole seconds since the last job (``-`` before the
    first), columns padded to shared widths two spaces apart."""
    cells = [
        [
            str(p.pid),
            "busy" if p.busy else "idle",
            str(p.jobs_done),
            "-" if p.idle_for is None else str(max(0, int(p.idle_for))),
        ]
        for p in sorted(rows, key=lambda p: p.pid)
    ]
    if not cells:
        return []
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    return [
        "  ".join([c[0].rjust(widths[0]), c[1].ljust(widths[1]),
                   c[2].rjust(widths[2]), c[3].rjust(widths[3])]).rstrip()
        for c in cells
    ]


def format_servers(rows: Sequence[ServerRow]) -> list[str]:
    """``servers``: one line per configured server, in the configured order: the server,
    its state, this driver's processes connected to it; columns padded two spaces apart
    (split on white space to read them)."""
    cells = [[printable_line(r.server), r.state, str(r.processes)] for r in rows]
    if not cells:
        return []
    widths = [max(len(c[i]) for c in cells) for i in range(2)]
    return [f"{c[0].ljust(widths[0])}  {c[1].ljust(widths[1])}  {c[2]}" for c in cells]


def _columns(cells: list[list[str]]) -> list[str]:
    """The first column left-aligned, the others right-aligned, two spaces apart."""
    if not cells:
        return []
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return ["  ".join([c[0].ljust(widths[0]), *(c[i].rjust(widths[i])
                                                 for i in range(1, len(c)))]).rstrip()
            for c in cells]


def format_job_slots(jobs: Sequence[tuple[str, Sequence[ProcessRow]]]) -> list[str]:
    """``slots``: per job (sorted by name) its processes, their slots, and how many of those
    hold a job now."""
    cells = [[printable_line(name), str(len(rows)), str(sum(r.slots for r in rows)),
              str(sum(r.busy_slots for r in rows))]
             for name, rows in sorted(jobs, key=lambda item: item[0])]
    return _columns(cells)


def format_process_slots(rows: Sequence[ProcessRow]) -> list[str]:
    """``slots <job>``: per process (by pid) its slots and how many hold a job now."""
    return _columns([[str(r.pid), str(r.slots), str(r.busy_slots)]
                     for r in sorted(rows, key=lambda r: r.pid)])
