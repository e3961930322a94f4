"""A locked pid file: a second instance on the same file exits with a clear error.

The lock (flock) dies with the process, so a stale file after a crash never blocks a start.
"""

from __future__ import annotations

import fcntl
import os


class PidFileLocked(Exception):
    """Another live process holds the pid file."""


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, write: bool = True) -> None:
        """Lock the file; write our pid now, or (write=False) later, once daemonized, so that
        nobody ever reads the pid of the parent that is about to exit."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PidFileLocked(
                f"{self.path}: another gearman-driver is running (pid {other})"
            ) from None
        self.fd = fd
        if write:
            self.write()
        else:
            os.ftruncate(fd, 0)

    def write(self) -> None:
        """(Re)write our pid, e.g. after daemonizing changed it."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
