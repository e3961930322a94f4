"""Signals that arrive before the master's loop exists, while the config is read and worker
code is imported (seconds, for large code bases).

Until a handler is installed the default action applies, and the default action of SIGHUP,
SIGUSR1 and SIGUSR2 is to terminate: a `systemctl reload` or a logrotate `postrotate` at the
wrong moment would kill a starting master. `defer` installs handlers that only remember them
(rather than blocking them: a blocked mask would be inherited by any process the worker code
starts at import, and survive its exec); the loop acts on them once it runs (`take`).
SIGTERM, SIGINT and SIGQUIT keep their default action: stopping a master that has started
nothing yet is what the sender wants, at once.
"""

from __future__ import annotations

import signal

DEFERRED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

_pending: list[int] = []


def _remember(signum: int, frame: object) -> None:
    if signum not in _pending:  # twice before the loop runs means once, as in the loop
        _pending.append(signum)


def defer() -> None:
    """Remember DEFERRED signals until `take`; unblock them (a re-executed master starts with
    them blocked, see reexec.hold_signals) so that one already pending is remembered now."""
    for signum in DEFERRED:
        signal.signal(signum, _remember)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, DEFERRED)


def take() -> list[int]:
    """The signals remembered since `defer`, in the order they came; forgets them."""
    taken = list(_pending)
    _pending.clear()
    return taken
