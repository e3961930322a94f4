"""Re-executing the master (gunicorn's USR2 model, same pid): after a reload that changed the
namespaces, `lib` or worker code on disk, once every child has drained.

Signals are held across the exec so that none is lost or fatal while the new image starts;
the new master unblocks them once its handlers are in place (see driver.py, `_open`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterable

log = logging.getLogger("gearman_driver.reload")


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
