"""Re-executing the master (gunicorn's USR2 model, same pid): after a reload that changed the
namespaces, `lib` or worker code on disk, once every child has drained.

Signals are held across the exec so that none is lost or fatal while the new image starts;
the new master unblocks them once its handlers are in place (see driver.py, `_open`).

The new master starts from what the old one checked and accepted, never from what is on disk
by then: the configuration the reload read (a file broken during the drain would make the new
master exit 78 and the service would be gone) travels across the exec in a `Handover`, with
the console clients still waiting for an answer, so that every reload request gets a true one:
those who asked for this reload are told OK once the new master is ready (or why it could not
load), those whose reload came during the drain have it run by the new master.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gearman_driver.config.settings import Settings
from gearman_driver.jobs.codestamp import CodeStamp, changes, restamp

log = logging.getLogger("gearman_driver.reload")

#: The environment variable naming the descriptor of the handover (a memfd) across the exec.
HANDOVER_ENV = "GEARMAN_DRIVER_HANDOVER_FD"


@dataclass
class Handover:
    """What an old master gives the new one: the accepted settings and waiting clients."""

    settings: Settings
    applied: list[int] = field(default_factory=list)  # asked for this reload: OK when ready
    pending: list[int] = field(default_factory=list)  # asked during the drain: reload anew

    def give(self) -> None:
        """Put the handover where the exec'd master finds it (an inheritable memfd)."""
        fd = os.memfd_create("gearman-driver-handover", 0)  # no MFD_CLOEXEC: it must pass
        data = memoryview(pickle.dumps(self))
        while data:
            data = data[os.write(fd, data):]
        os.environ[HANDOVER_ENV] = str(fd)

    def refuse(self, error: str) -> None:
        """The new master cannot start: every waiting client is told why, in the console's
        words, before it exits (a true answer, though the service is then down)."""
        line = f"ERR reload_failed: {' '.join(error.split())}\n.\n".encode()
        for fd in (*self.applied, *self.pending):
            try:
                with socket.socket(fileno=fd) as client:
                    client.settimeout(2.0)
                    client.sendall(line)
            except OSError:
                pass
        self.applied, self.pending = [], []


@dataclass(frozen=True)
class Accepted:
    """A reload that re-executes the master, between its trial and the exec: the settings it
    read and the stamp of the code its trial loaded."""

    settings: Settings
    code: CodeStamp

    def code_changed_since(self) -> str | None:
        """Why the exec must not happen now (the code changed on disk while the processes
        drained, so the new master would not run what was tried), or None."""
        changed = changes(self.code, restamp(self.code))
        if not changed:
            return None
        return (f"the worker code changed while the processes drained "
                f"({', '.join(changed)}); not re-executing: reload again to load it")


Waiter = Callable[[str | None], None]


def detach_all(waiters: Iterable[Waiter], otherwise: str | None) -> list[int]:
    """The connections of the waiters that can be handed over; the others (not console
    clients) are told `otherwise` now."""
    fds = []
    for waiter in waiters:
        detach = getattr(waiter, "detach", None)
        fd = detach() if detach is not None else None
        if fd is None:
            waiter(otherwise)
        else:
            fds.append(fd)
    return fds


def take_handover() -> Handover | None:
    """In a fresh master: the handover of the master it replaces, if it is a re-exec; the
    variable goes (workers and trials forked later must not see it)."""
    value = os.environ.pop(HANDOVER_ENV, None)
    if value is None:
        return None
    try:
        fd = int(value)
        with os.fdopen(fd, "rb") as source:
            source.seek(0)
            handover = pickle.load(source)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError):
        return None  # not ours, or unreadable: start from the config files
    if not isinstance(handover, Handover):
        return None
    for client in (*handover.applied, *handover.pending):
        os.set_inheritable(client, False)
    return handover


def hold_signals(signals: Iterable[int], wakeup_fd: int | None) -> None:
    """Before re-executing: block `signals` (the mask survives exec) so that one arriving
    before the new image has its handlers (the default action of SIGHUP or SIGTERM would kill
    the master) waits until the new master is ready and unblocks them; those already in the
    self-pipe (`wakeup_fd`), which exec closes, are raised again to wait with them."""
    held = set(signals)
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    pending = b""
    if wakeup_fd is not None:
        try:
            pending = os.read(wakeup_fd, 4096)
        except BlockingIOError:
            pass
    for signum in set(pending) & {int(s) for s in held} - {signal.SIGCHLD}:
        os.kill(os.getpid(), signum)


def reexec_argv(daemonized: bool) -> list[str]:
    """The command line that started this master, to exec it again (in the foreground).

    The script that started us runs again (the Debian package's puts its private library
    directory on sys.path); under `python -m gearman_driver.cli` the module runs again."""
    extra = ["--no-daemonize"] if daemonized else []
    script = sys.argv[0]
    if os.path.isfile(script) and not script.endswith(os.path.join("gearman_driver", "cli.py")):
        return [sys.executable, script, *sys.argv[1:], *extra]
    return [sys.executable, "-m", "gearman_driver.cli", *sys.argv[1:], *extra]


def reexec(daemonized: bool) -> None:
    """Replace this process with a fresh master (same pid); only after every child is gone."""
    argv = reexec_argv(daemonized)
    log.info("re-executing: %s", " ".join(argv))
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execv(sys.executable, argv)
