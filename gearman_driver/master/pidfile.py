"""A locked pid file: a second instance on the same file exits with a clear error.

The lock (flock) dies with the process, so a stale file after a crash never blocks a start.
The file is opened without following a final symlink and must be a regular file: the pid file
often sits in a directory others can write to, and a root daemon that followed a planted link
would truncate whatever file the link names.
"""

from __future__ import annotations

import fcntl
import os
import stat

from gearman_driver.paths import CannotCreate, describe_path_error, kind_of


class PidFileLocked(Exception):
    """Another live process holds the pid file."""


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, write: bool = True) -> None:
        """Lock the file; write our pid now, or (write=False) later, once daemonized, so that
        nobody ever reads the pid of the parent that is about to exit."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise CannotCreate(f"pidfile {self.path}: {describe_path_error(self.path, exc)}"
                               ) from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise CannotCreate(f"pidfile {self.path}: is {kind_of(mode)}, expected a regular "
                               "file")
        os.set_blocking(fd, True)
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

    def same_file(self, path: str) -> bool:
        """Whether `path` names the file this one holds (a reload may spell it otherwise)."""
        if self.fd is None:
            return False
        try:
            here, there = os.fstat(self.fd), os.stat(path)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
