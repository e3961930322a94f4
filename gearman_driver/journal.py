"""Log records to the systemd journal over its native protocol, with structured fields.

Used instead of stderr when stderr is the journal (JOURNAL_STREAM): each record becomes one
journal entry carrying PRIORITY, SYSLOG_IDENTIFIER, `JOB=` in worker processes and, while a job
is in hand, `GEARMAN_FUNCTION=` and `GEARMAN_HANDLE=`, so that
`journalctl -u gearman-driver JOB=<name>` shows one job's lines and a traceback stays one entry.

The protocol is the journal's documented datagram format (systemd's "Native Journal Protocol"):
`KEY=value\\n` per field, or `KEY\\n` + a 64-bit little-endian length + the value + `\\n` when the
value holds a newline; an entry too big for one datagram goes in a sealed memfd passed with
SCM_RIGHTS. Written here (some 60 lines) because Debian's python3-systemd is a C extension that
pip cannot build without libsystemd-dev, and the daemon needs nothing else from it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping
from contextvars import ContextVar

SOCKET_PATH = "/run/systemd/journal/socket"
IDENTIFIER = "gearman-driver"
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL

# Fields of this process (JOB in a worker), set by logs.set_process_context; and the job in
# hand (function, handle), set by the job runner (child/process.py) around each job: lines
# logged meanwhile are about that job. It only holds the pair; the handler spells the fields.
process_fields: dict[str, str] = {}
job_in_hand: tuple[str, bytes | str] | None = None
#: The job in hand of a process of several slots, per task or thread (job_in_hand is the one
#: process-wide job of a process of one slot, set on its job path at the cost of a store).
job_context: ContextVar[tuple[str, bytes | str] | None] = ContextVar("gearman_driver_job",
                                                                     default=None)


def encode(fields: Mapping[str, str]) -> bytes:
    """One entry in the native protocol's datagram format."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """A logging handler that sends each record to journald as one entry."""

    def __init__(self, path: str = SOCKET_PATH) -> None:
        super().__init__()
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        fields = {
            "MESSAGE": self.format(record),
            "PRIORITY": str(syslog_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName or "",
            **process_fields,
        }
        current = job_in_hand if job_in_hand is not None else job_context.get()
        if current is not None:
            function, handle = current
            fields["GEARMAN_FUNCTION"] = function
            fields["GEARMAN_HANDLE"] = (handle.decode("ascii", "replace")
                                        if isinstance(handle, bytes) else handle)
        fields.update(getattr(record, "journal_fields", {}))  # e.g. the master naming a job
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = self.fields(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self.send(encode(fields))
        except OSError:  # journald away (restarting?): the line still reaches the journal's
            sys.stderr.write(with_priority(fields["MESSAGE"], record.levelno) + "\n")
            sys.stderr.flush()  # stream on stderr, with its priority

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        """Too big for a datagram (a long traceback): journald reads it from a sealed memfd."""
        fd = os.memfd_create("gearman-driver-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            # sendmsg, not socket.send_fds: Python 3.11's ignores its address argument
            self.sock.sendmsg([b""], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       struct.pack("i", fd))], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.sock.close()
        super().close()


def with_priority(text: str, levelno: int) -> str:
    """Every line (tracebacks too) prefixed with its priority, as the journal's stream reads
    it (`<3>` …): for stderr when the native socket cannot be used."""
    prefix = f"<{syslog_priority(levelno)}>"
    return "\n".join(prefix + line for line in text.split("\n"))


def syslog_priority(levelno: int) -> int:
    """logging level -> syslog priority (`journalctl -p`): error 3, warning 4, info 6."""
    for level, priority in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                            (logging.INFO, 6)):
        if levelno >= level:
            return priority
    return 7
