"""sd_notify for a `Type=notify` service: readiness, STATUS, reload, stop and the watchdog.

Without NOTIFY_SOCKET (not under systemd) every call is silent and costs nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

STATUS_EVERY = 1.0


class Notifier:
    """Sends sd_notify messages through `sdnotify`; keeps STATUS current and pings the watchdog."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = None
        if self.enabled:
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
            if self._notifier.socket is not None:
                # a receiver that stops reading must not wedge the master's loop: with a full
                # queue a message is dropped (sdnotify swallows the error) instead of blocking
                self._notifier.socket.setblocking(False)
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        self.watchdog_every = (int(usec) / 2e6 if usec.isdigit() and int(usec) > 0
                               and (not pid or pid == str(os.getpid())) else 0.0)
        self._next_watchdog = 0.0
        self._next_status = 0.0
        self._last_status = ""

    def send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def tick(self, now: float, status: Callable[[], str]) -> None:
        """Called every turn of the master loop: the watchdog proves the loop is turning."""
        if not self.enabled:
            return
        if self.watchdog_every and now >= self._next_watchdog:
            self.send("WATCHDOG=1")
            self._next_watchdog = now + self.watchdog_every
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY
            self.status(status())
