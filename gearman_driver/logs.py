"""Logging set-up: Log4perl-style layouts, a log file or stderr, and journald priorities.

Layout placeholders (Gearman::Driver's `loglayout`): `%d` date and time, `%p` level, `%m` message
(prefixed with `job[pid]: ` in worker processes), `%n` newline, `%c` logger name, `%P` pid,
`%%` a literal percent sign. Anything else is printed as it stands.
When stderr is the systemd journal (`JOURNAL_STREAM`), records go to the journal's native socket
as entries with structured fields (see journal.py), without the time stamp, which the journal
keeps itself; if that socket is missing, each stderr line starts with its syslog priority
(`<3>` … `<7>`) instead.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from typing import IO, TYPE_CHECKING

from gearman_driver import journal
from gearman_driver.paths import describe_path_error

if TYPE_CHECKING:
    from gearman_driver.config.settings import Settings

DEFAULT_LAYOUT = "[%d] %p %m%n"
DATE_FORMAT = "%Y/%m/%d %H:%M:%S"

_PLACEHOLDERS = {
    "d": "%(asctime)s",
    "p": "%(levelname)s",
    "m": "%(context)s%(message)s",
    "n": "\n",
    "c": "%(name)s",
    "P": "%(process)d",
    "%": "%%",
}

_context = ""


def set_process_context(context: str, job: str | None = None) -> None:
    """Name this process in every message it logs (children: `job[pid]`, and JOB= in the
    journal)."""
    global _context
    _context = f"{context}: " if context else ""
    journal.process_fields.clear()
    if job:
        journal.process_fields["JOB"] = job


def about_job(name: str, handle: str = "", function: str = "") -> dict[str, dict[str, str]]:
    """`extra=` for a master's line about one job (its processes, a timeout), so that
    `journalctl JOB=<name>` shows it beside the job's own lines."""
    fields = {"JOB": name}
    if handle:
        fields["GEARMAN_HANDLE"] = handle
    if function:
        fields["GEARMAN_FUNCTION"] = function
    return {"journal_fields": fields}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.context = _context
        return True


def translate_layout(layout: str, *, journal: bool = False) -> str:
    """Log4perl layout -> Python logging format string (without the final newline)."""
    out: list[str] = []
    i = 0
    while i < len(layout):
        char = layout[i]
        if char == "%" and i + 1 < len(layout) and layout[i + 1] in _PLACEHOLDERS:
            key = layout[i + 1]
            out.append("" if journal and key == "d" else _PLACEHOLDERS[key])
            i += 2
            continue
        out.append("%%" if char == "%" else char)
        i += 1
    text = "".join(out)
    if text.endswith("\n"):
        text = text[:-1]
    if journal:
        text = text.replace("[]", "").strip()
    return text


class _JournalFormatter(logging.Formatter):
    """Prefix every line (tracebacks too) with its syslog priority, for `journalctl -p`."""

    def format(self, record: logging.LogRecord) -> str:
        return journal.with_priority(super().format(record), record.levelno)


def stderr_is_journal(stream: IO[str] | None = None) -> bool:
    """True when stderr is the journal's stream, as systemd tells with JOURNAL_STREAM."""
    value = os.environ.get("JOURNAL_STREAM", "")
    stream = stream or sys.stderr
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return info.st_dev == device and info.st_ino == inode


class _NoFollowFileHandler(logging.FileHandler):
    """Appends to the log file without following a final symlink: a root daemon logging into a
    directory others can write to must not append to whatever file a planted link names."""

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.baseFilename, flags, 0o644)
        return io.TextIOWrapper(io.FileIO(fd, "a"), encoding=self.encoding,
                                errors=self.errors, write_through=False)


_handler: logging.Handler | None = None


def open_handler(logfile: str | None = None, layout: str = DEFAULT_LAYOUT) -> logging.Handler:
    """A handler for the log file (opened now: OSError if it cannot be), or for stderr."""
    handler: logging.Handler
    to_journal = False
    formatter_class = logging.Formatter
    if logfile:
        handler = _NoFollowFileHandler(logfile, encoding="utf-8")
    elif stderr_is_journal() and os.path.exists(journal.SOCKET_PATH):
        handler, to_journal = journal.JournalHandler(), True
    else:
        handler = logging.StreamHandler(sys.stderr)
        if stderr_is_journal():
            formatter_class, to_journal = _JournalFormatter, True
    handler.setFormatter(formatter_class(translate_layout(layout, journal=to_journal),
                                         DATE_FORMAT))
    handler.addFilter(_ContextFilter())
    return handler


def open_configured(settings: Settings) -> logging.Handler:
    """open_handler for these settings; a log file that cannot be opened is the config's
    mistake, told in one line at its `logfile` key (at start, and when a reload names it)."""
    try:
        return open_handler(settings.logfile, settings.loglayout)
    except OSError as exc:
        raise settings.error(("logfile",), f"expected a file that can be opened for "
                             f"appending, got {settings.logfile!r} "
                             f"({describe_path_error(settings.logfile or '', exc)})") from exc


def install(handler: logging.Handler, level: str = "INFO") -> logging.Handler:
    """Make `handler` the root logger's only one (closing the one before)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler
    return handler


def setup_logging(level: str = "INFO", logfile: str | None = None,
                  layout: str = DEFAULT_LAYOUT) -> logging.Handler:
    """(Re)configure the root logger: open_handler, then install."""
    return install(open_handler(logfile, layout), level)


def reopen_logfile() -> bool:
    """SIGUSR1: reopen the log file after logrotate moved it; False when it could not be (True
    also when logging goes to stderr or the journal: nothing to reopen). One that cannot
    be reopened (its directory removed, ...) is no reason to stop: the file opened before stays
    in use, and one warning says so, also on stderr (the journal under systemd), since that
    file may no longer have a name."""
    handler = _handler
    if not isinstance(handler, logging.FileHandler):
        return True
    try:
        stream = handler._open()
    except OSError as exc:
        message = (f"cannot reopen the log file {handler.baseFilename}: "
                   f"{describe_path_error(handler.baseFilename, exc)}; still logging to the "
                   f"file opened before")
        logging.getLogger("gearman_driver").warning("%s", message)
        print(f"gearman-driver: warning: {message}", file=sys.stderr, flush=True)
        return False
    handler.acquire()
    try:
        old, handler.stream = handler.stream, stream
    finally:
        handler.release()
    if old is not None:
        try:
            old.close()
        except OSError:
            pass  # its last lines could not be flushed (disk full): the new file goes on
    return True
