"""The console's commands: parsing and validation, with no I/O (replies.py formats them).

Kept apart from the socket server so every command and every error text can be tested
as a plain function call, and so the wording stays compatible with Gearman::Driver's
console (existing operator scripts parse it). A reply is a list of lines; the server adds
the terminating ``.`` line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gearman_driver.console.replies import (
    JobRow,
    ProcessRow,
    ServerRow,
    format_job_slots,
    format_process_slots,
    format_processes,
    format_servers,
    format_show,
    format_status,
    printable_line,
)
from gearman_driver.scoreboard import MAX_PROCESSES

__all__ = [
    "Controller",
    "Deferred",
    "ReloadWaiter",
    "Reply",
    "CommandError",
    "COMMANDS",
    "execute",
    "handle_line",
]

_DIGITS = re.compile(r"[0-9]+")
_PID = re.compile(r"[1-9][0-9]{0,9}")


class Controller(Protocol):
    """What the console needs from the master; the job table stays the single truth."""

    def job_rows(self) -> Sequence[JobRow]: ...

    def process_rows(self, job: str) -> Sequence[ProcessRow]: ...

    def server_rows(self) -> Sequence[ServerRow]: ...

    def has_job(self, job: str) -> bool: ...

    def set_limits(
        self, job: str, min_processes: int | None, max_processes: int | None
    ) -> None: ...

    def stop_pids(self, pids: Sequence[int]) -> list[int]: ...

    def stop_jobs(self, jobs: Sequence[str]) -> None: ...

    def request_shutdown(self) -> None: ...

    def request_reload(self, done: Callable[[str | None], None]) -> None:
        """Re-read the config; call ``done(None)`` once reloaded, ``done(why)`` if refused."""
        ...


class Deferred(Protocol):
    """A client waiting for a reply that comes later (the server's connection to it)."""

    def answer(self, reply: Reply) -> None:
        """Send the reply now, and go on with the client's next commands."""
        ...

    def detach(self) -> int | None:
        """Hand the client over: an inheritable descriptor of its connection, which this
        process no longer serves (a master about to re-execute itself gives it to the new
        one, which answers); None if it cannot be."""
        ...


@dataclass(frozen=True, slots=True)
class Reply:
    """Lines to send (without the final ``.``); ``close`` asks the server to hang up.

    ``later`` defers the answer (``reload`` waits for the outcome of the reload it asked for):
    the server calls it with the waiting client, answered through its ``answer``, and reads
    no further command from that client until then."""

    lines: tuple[str, ...]
    close: bool = False
    terminate: bool = True  # False for quit: no reply at all, not even "."
    later: Callable[[Deferred], None] | None = None


class ReloadWaiter:
    """A console client waiting for the outcome of the reload it asked for: told once,
    ``OK`` or ``ERR reload_failed: why``; or handed over with its connection (`detach`) when
    the master re-executes itself, so that the new master gives the answer."""

    def __init__(self, client: Deferred) -> None:
        self.client = client

    def __call__(self, error: str | None) -> None:
        self.client.answer(reload_reply(error))

    def detach(self) -> int | None:
        return self.client.detach()


def reload_reply(error: str | None) -> Reply:
    """What the console answers to `reload`: OK (applied) or why it was refused."""
    if error is None:
        return _ok()
    return Reply((CommandError("reload_failed", printable_line(error)).line,))


class CommandError(Exception):
    """A user error, answered as ``ERR <code>: <detail>``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def line(self) -> str:
        return f"ERR {self.code}: {self.detail}"


def _ok() -> Reply:
    return Reply(("OK",))


def _args(name: str, args: list[str], count: int) -> list[str]:
    """Exactly ``count`` arguments, missing ones as ``""`` so they fail the way Gearman::Driver
    fails them (``invalid_job_name: `` with an empty name, ``must be >= 0`` for a value);
    extra ones, which Gearman::Driver ignored silently, are a usage error here."""
    if len(args) > count:
        raise CommandError("invalid_value", f"usage: {COMMANDS[name][1]}")
    return args + [""] * (count - len(args))


def _job_row(ctl: Controller, name: str) -> JobRow:
    for row in ctl.job_rows():
        if row.name == name:
            return row
    raise CommandError("invalid_job_name", printable_line(name))


def _count(value: str, what: str) -> int:
    """Gearman::Driver accepts digits only (no sign) and answers ``must be >= 0`` for
    anything else, a missing value included."""
    if not _DIGITS.fullmatch(value):
        raise CommandError("invalid_value", f"{what} must be >= 0")
    return int(value)


def _at_most_ceiling(value: int, what: str) -> int:
    """No job may ask for more processes than the driver has scoreboard slots: a huge limit
    once made the master fork (and log) without end."""
    if value > MAX_PROCESSES:
        raise CommandError("invalid_value", f"{what} must be <= {MAX_PROCESSES}")
    return value


def _set_limits(ctl: Controller, job: str, lo: int | None, hi: int | None) -> Reply:
    try:
        ctl.set_limits(job, lo, hi)
    except ValueError as exc:  # the controller's own limits (e.g. scoreboard size)
        raise CommandError("invalid_value", printable_line(str(exc))) from exc
    return _ok()


def cmd_status(ctl: Controller, args: list[str]) -> Reply:
    return Reply(tuple(format_status(ctl.job_rows())))


def cmd_show(ctl: Controller, args: list[str]) -> Reply:
    """The job's unpadded status line, then its pids alone on their lines (scripts read them
    with ``/^\\d+$/``)."""
    (name,) = _args("show", args, 1)
    row = _job_row(ctl, name)
    pids = sorted(p.pid for p in ctl.process_rows(row.name))
    return Reply((format_show(row), *(str(pid) for pid in pids)))


def cmd_ps(ctl: Controller, args: list[str]) -> Reply:
    """gearman-driver's own per-process view, kept out of ``show`` so ``show`` stays Perl's."""
    (name,) = _args("ps", args, 1)
    row = _job_row(ctl, name)
    return Reply(tuple(format_processes(ctl.process_rows(row.name))))


def cmd_servers(ctl: Controller, args: list[str]) -> Reply:
    """gearman-driver's own: each configured gearmand, up, down or unknown (not polled yet),
    and how many of our processes it lists as connected (a server that answers while our
    workers on it are stranded shows 0)."""
    _args("servers", args, 0)
    return Reply(tuple(format_servers(ctl.server_rows())))


def cmd_slots(ctl: Controller, args: list[str]) -> Reply:
    """Slots (jobs a process holds at once) and busy slots: per job, or per process of one
    job (gearman-driver's own; `status` stays Gearman::Driver's)."""
    if len(args) > 1:
        raise CommandError("invalid_value", "usage: slots [<job>]")
    if args:
        row = _job_row(ctl, args[0])
        return Reply(tuple(format_process_slots(ctl.process_rows(row.name))))
    return Reply(tuple(format_job_slots([(row.name, ctl.process_rows(row.name))
                                         for row in ctl.job_rows()])))


def cmd_set_min_processes(ctl: Controller, args: list[str]) -> Reply:
    name, value = _args("set_min_processes", args, 2)
    row = _job_row(ctl, name)
    lo = _at_most_ceiling(_count(value, "min_processes"), "min_processes")
    if lo > row.max_processes:
        raise CommandError("invalid_value", "min_processes must be smaller than max_processes")
    return _set_limits(ctl, row.name, lo, None)


def cmd_set_max_processes(ctl: Controller, args: list[str]) -> Reply:
    name, value = _args("set_max_processes", args, 2)
    row = _job_row(ctl, name)
    hi = _at_most_ceiling(_count(value, "max_processes"), "max_processes")
    if hi < row.min_processes:
        raise CommandError("invalid_value", "max_processes must be greater than min_processes")
    return _set_limits(ctl, row.name, None, hi)


def cmd_set_processes(ctl: Controller, args: list[str]) -> Reply:
    name, lo_text, hi_text = _args("set_processes", args, 3)
    row = _job_row(ctl, name)
    lo = _count(lo_text, "min_processes")
    hi = _count(hi_text, "max_processes")
    _at_most_ceiling(hi, "max_processes")
    _at_most_ceiling(lo, "min_processes")
    if hi < lo:
        raise CommandError("invalid_value", "max_processes must be greater than min_processes")
    return _set_limits(ctl, row.name, lo, hi)


def cmd_kill(ctl: Controller, args: list[str]) -> Reply:
    """Like Gearman::Driver, words that are not one of our pids are passed over; only when
    none is left is it an error. A pid is written as ``ps`` shows it (no sign, no leading
    zero), so 0 or a negative number, which os.kill reads as a process group, never passes."""
    wanted = list(dict.fromkeys(int(a) for a in args if _PID.fullmatch(a)))
    if not wanted or not ctl.stop_pids(wanted):
        raise CommandError("invalid_value", "the given PID(s) do not belong to us")
    return _ok()


def cmd_killall(ctl: Controller, args: list[str]) -> Reply:
    """``*`` alone means every job (as in Gearman::Driver); names are all checked before
    any process is stopped, so a typo stops nothing."""
    if not args:
        raise CommandError("invalid_value", "no job_names given")
    if args == ["*"]:
        jobs = [r.name for r in ctl.job_rows()]
    else:
        jobs = list(dict.fromkeys(args))
        for job in jobs:
            if not ctl.has_job(job):
                raise CommandError("invalid_job_name", printable_line(job))
    ctl.stop_jobs(jobs)
    return _ok()


def cmd_help(ctl: Controller, args: list[str]) -> Reply:
    width = max(len(usage) for _, usage, _ in COMMANDS.values())
    return Reply(tuple(f"{usage.ljust(width)}  {text}" for _, usage, text in COMMANDS.values()))


def cmd_quit(ctl: Controller, args: list[str]) -> Reply:
    return Reply((), close=True, terminate=False)


def cmd_shutdown(ctl: Controller, args: list[str]) -> Reply:
    ctl.request_shutdown()
    return _ok()


def cmd_reload(ctl: Controller, args: list[str]) -> Reply:
    _args("reload", args, 0)
    return Reply((), later=lambda client: ctl.request_reload(ReloadWaiter(client)))


Handler = Callable[[Controller, list[str]], Reply]

COMMANDS: dict[str, tuple[Handler, str, str]] = {
    "status": (cmd_status, "status", "every job: name min max processes last_run last_error msg"),
    "show": (cmd_show, "show <job>", "a job's status line, then its pids one per line"),
    "ps": (cmd_ps, "ps <job>", "a job's processes: pid state jobs_done idle_secs"),
    "servers": (cmd_servers, "servers", "each gearmand: host:port up|down|unknown processes"),
    "slots": (cmd_slots, "slots [<job>]",
              "per job: processes slots busy_slots; with a job, per process: pid slots busy"),
    "set_min_processes": (
        cmd_set_min_processes, "set_min_processes <job> <n>", "set a job's minimum processes"
    ),
    "set_max_processes": (
        cmd_set_max_processes, "set_max_processes <job> <n>", "set a job's maximum processes"
    ),
    "set_processes": (
        cmd_set_processes, "set_processes <job> <min> <max>", "set both limits at once"
    ),
    "reload": (cmd_reload, "reload", "re-read the config files; OK, or ERR reload_failed: why"),
    "kill": (cmd_kill, "kill <pid> ...", "stop these processes gracefully"),
    "killall": (cmd_killall, "killall <job> ... | killall *", "stop every process of jobs"),
    "help": (cmd_help, "help", "this list"),
    "quit": (cmd_quit, "quit", "close this connection"),
    "shutdown": (cmd_shutdown, "shutdown", "stop all processes gracefully and exit the daemon"),
}


#: Commands that change something: logged with who asked, and subject to the console's access
#: rule (only root and the daemon's user, unless console_allow_users says otherwise).
CHANGES = frozenset(
    {"set_min_processes", "set_max_processes", "set_processes", "kill", "killall", "shutdown",
     "reload"}
)

#: Says why this client may not run a changing command (None: it may); asked only when one
#: arrives, so read-only clients cost no credential lookup.
Authorize = Callable[[], "str | None"]


def execute(ctl: Controller, words: list[str], log: logging.Logger, who: str = "",
            authorize: Authorize | None = None) -> Reply:
    """Run one command. User errors become ``ERR`` replies; a bug in a handler or in the
    controller is logged with its traceback and answered ``ERR internal_error`` so it never
    reaches the master's loop."""
    name, args = words[0], words[1:]
    try:
        entry = COMMANDS.get(name)
        if entry is None:
            raise CommandError("unknown_command", printable_line(name))
        if name in CHANGES and authorize is not None:
            denied = authorize()
            if denied is not None:
                log.warning("console %s: %s refused: %s", who, name, denied)
                raise CommandError("permission_denied", denied)
        reply = entry[0](ctl, args)
        if name in CHANGES:  # operators want to know who changed what from the journal
            log.info("console %s: %s%s", who, printable_line(" ".join(words))[:500],
                     f" -> {reply.lines[0]}" if reply.lines else "")
        return reply
    except CommandError as exc:
        return Reply((exc.line,))
    except Exception as exc:
        log.exception("console command %r failed", printable_line(" ".join(words))[:200])
        short = printable_line(f"{type(exc).__name__}: {exc}")[:200]
        return Reply((f"ERR internal_error: {short}",))


def handle_line(
    ctl: Controller, raw: bytes, log: logging.Logger, who: str = "",
    authorize: Authorize | None = None,
) -> Reply | None:
    """One received line, its end stripped or not; None for a blank line (no reply)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Reply(("ERR invalid_encoding: commands are UTF-8",))
    words = text.split()
    if not words:
        return None
    return execute(ctl, words, log, who, authorize)
