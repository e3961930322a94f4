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
import json
import logging
import mmap
import os
import signal
import struct
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


def _say(message: str) -> None:
    """One line on stderr (the journal under systemd), whatever state stderr is in."""
    try:
        print(f"gearman-driver: {_context}{message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class _NoFollowFileHandler(logging.FileHandler):
    """Appends to the log file without following a final symlink: a root daemon logging into a
    directory others can write to must not append to whatever file a planted link names.

    A line that cannot be written (the disk is full, the file system went read-only) is said
    once on stderr, and again once lines can be written again, with the count lost between;
    not Python's "--- Logging error ---" traceback for every line."""

    lost = 0  # lines that could not be written since the last one that could

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.baseFilename, flags, 0o644)
        return io.TextIOWrapper(io.FileIO(fd, "a"), encoding=self.encoding,
                                errors=self.errors, write_through=False)

    def emit(self, record: logging.LogRecord) -> None:
        lost = self.lost
        super().emit(record)  # calls handleError when the write or the flush fails
        if lost and self.lost == lost:
            self.lost = 0
            _say(f"the log file {self.baseFilename} can be written again; {lost} lines "
                 f"were lost")

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if not self.lost:
            error = sys.exc_info()[1]
            why = describe_path_error(self.baseFilename, error) \
                if isinstance(error, OSError) else repr(error)
            _say(f"cannot write the log file {self.baseFilename}: {why}; going on without "
                 f"it until it can be written again")
        self.lost += 1


class _LogTarget:
    """Where every process of the daemon logs now (file, layout, level), in one page of
    shared memory made before the first fork: the master publishes each change (a reload to
    another logfile, level or layout; SIGUSR1 after logrotate moved the file) under a new
    generation, and each worker process, on its next line, sees the generation changed and
    opens the same target itself. No signal to every child, no restart of any: a reload or a
    rotation reaches them all. A sequence number, odd while the master writes, keeps a
    reader from taking a half-written record."""

    SIZE = mmap.PAGESIZE * 2
    _HEAD = struct.Struct("=II")  # sequence, payload length

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, self.SIZE)

    def generation(self) -> int:
        return int(self._HEAD.unpack_from(self._map, 0)[0])

    def publish(self, logfile: str | None, layout: str, level: str) -> int:
        """Make this the target (master only); returns its generation."""
        payload = json.dumps([logfile, layout, level]).encode()
        seq = self.generation()
        if len(payload) > self.SIZE - self._HEAD.size:  # past any real path and layout
            return seq
        self._HEAD.pack_into(self._map, 0, seq + 1, 0)
        self._map[self._HEAD.size:self._HEAD.size + len(payload)] = payload
        self._HEAD.pack_into(self._map, 0, seq + 2, len(payload))
        return seq + 2

    def read(self) -> tuple[int, str | None, str, str] | None:
        """(generation, logfile, layout, level), or None while the master is writing."""
        seq, size = self._HEAD.unpack_from(self._map, 0)
        if seq % 2 or not size:
            return None
        payload = bytes(self._map[self._HEAD.size:self._HEAD.size + size])
        if self._HEAD.unpack_from(self._map, 0)[0] != seq:
            return None
        logfile, layout, level = json.loads(payload)
        return seq, logfile, layout, level


_target: _LogTarget | None = None


class _Following(logging.Handler):
    """The root logger's one handler in every process of the daemon: it hands each record to
    the handler of the current target, and in a worker process opens the new target first
    when the master published one since (see _LogTarget)."""

    def __init__(self, inner: logging.Handler, generation: int) -> None:
        super().__init__()
        self.inner = inner
        self.generation = generation

    def handle(self, record: logging.LogRecord) -> bool:
        if _target is not None and _target.generation() != self.generation:
            self._follow(_target)
        return bool(self.inner.handle(record))

    def _follow(self, target: _LogTarget) -> None:
        current = target.read()
        if current is None:
            return  # the master is writing it: the next line looks again
        generation, logfile, layout, level = current
        self.generation = generation
        try:
            inner = open_handler(logfile, layout)
        except OSError as exc:
            _say(f"cannot open the log file {logfile}: "
                 f"{describe_path_error(logfile or '', exc)}; still logging to the one "
                 f"opened before")
            return
        old, self.inner = self.inner, inner
        logging.getLogger().setLevel(level)
        old.close()

    def close(self) -> None:
        self.inner.close()
        super().close()


_handler: _Following | None = None

#: What the master sends its worker processes when the level changed: a record below the old
#: level is never made, so the lazy check in _Following.handle cannot see a lower new level.
LEVEL_SIGNAL = signal.SIGUSR1


def follow_level(signum: int, frame: object) -> None:
    """A worker process's LEVEL_SIGNAL handler: take the published level now (the new log
    file, if any, is opened on the next line, outside of any signal handler)."""
    current = _target.read() if _target is not None else None
    if current is not None:
        logging.getLogger().setLevel(current[3])


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
    setattr(handler, "layout", layout)  # noqa: B010 (published with the target, see install)
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
    """Make `handler` the root logger's only one (closing the one before), for this process
    and, through the published target, for every worker process it forked or will fork."""
    global _handler, _target
    if _target is None:
        _target = _LogTarget()
    logfile = handler.baseFilename if isinstance(handler, logging.FileHandler) else None
    layout = getattr(handler, "layout", DEFAULT_LAYOUT)
    generation = _target.publish(logfile, layout, level)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _handler = _Following(handler, generation)
    root.addHandler(_handler)
    root.setLevel(level)
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
    handler = _handler.inner if _handler is not None else None
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
    if _target is not None and _handler is not None:  # worker processes reopen it too
        _handler.generation = _target.publish(handler.baseFilename,
                                              getattr(handler, "layout", DEFAULT_LAYOUT),
                                              logging.getLevelName(logging.getLogger().level))
    return True
