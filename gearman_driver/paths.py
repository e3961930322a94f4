"""Files and sockets the daemon creates at start-up: how their failures are told.

A pid file in a missing directory, a FIFO where the pid file should be, a console port in
use: each is reported as one line naming the path or port and the reason, and the daemon
exits with EX_CANTCREAT (73), which the systemd unit does not restart in a loop.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["EX_CANTCREAT", "CannotCreate", "describe_path_error", "kind_of"]

#: sysexits.h EX_CANTCREAT: a file or socket the daemon needs cannot be created.
EX_CANTCREAT = 73

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISREG, "a regular file"))


class CannotCreate(OSError):
    """One line naming the path or port and the reason (an OSError, so that callers that
    already handle a failed open or bind keep doing so)."""

    def __str__(self) -> str:
        if self.strerror is not None:  # CannotCreate(errno, text)
            return self.strerror
        return str(self.args[0]) if self.args else "cannot create"


def kind_of(mode: int) -> str:
    """'a directory', 'a FIFO', 'a regular file', ... for an lstat/fstat mode."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "an unknown kind of file"


def describe_path_error(path: str, exc: OSError) -> str:
    """Why a path could not be opened or bound, in words an operator can act on."""
    parent = os.path.dirname(os.path.abspath(path))
    if exc.errno == errno.ENOENT and not os.path.isdir(parent):
        return f"directory {parent} does not exist"
    if exc.errno == errno.ELOOP:
        return "is a symbolic link (not followed)"
    if exc.errno == errno.EISDIR:
        return "is a directory, expected a regular file"
    return exc.strerror or str(exc)
