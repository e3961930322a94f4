"""The master's listening servers: the management console and the metrics endpoint, each
open only when configured, both in the master's selector loop.

Owned here so that the master's loop only ticks, closes and drops them in a child, and a
reload asks here whether a new console address can be opened and follows new addresses."""

from __future__ import annotations

import logging
import selectors
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gearman_driver.config.settings import ConfigError, Settings
from gearman_driver.paths import CannotCreate

if TYPE_CHECKING:
    from gearman_driver.console.control import DriverControl
    from gearman_driver.master.looplag import LoopLag
    from gearman_driver.master.metrics import MetricsSource

log = logging.getLogger("gearman_driver.reload")

CONSOLE_KEYS = ("console_socket", "console_port", "console_host")
METRICS_KEYS = ("metrics_port", "metrics_host")


class Endpoints:
    """The console and the metrics endpoint; `control` and `metrics_source` say what they
    read, built when they open."""

    def __init__(self, selector: selectors.BaseSelector, turn_seconds: float, *,
                 control: Callable[[], DriverControl],
                 metrics_source: Callable[[LoopLag], MetricsSource]) -> None:
        self.selector = selector
        self.turn_seconds = turn_seconds
        self._control = control
        self._metrics_source = metrics_source
        self.console: Any = None
        self.metrics: Any = None
        self.loop_lag: LoopLag | None = None  # fed only while a metrics endpoint reads it

    def open(self, settings: Settings) -> None:
        self.open_console(settings)
        self.open_metrics(settings)

    def open_metrics(self, settings: Settings) -> None:
        if settings.metrics_port:  # else not even imported: metrics off costs nothing
            from gearman_driver.master.looplag import LoopLag
            from gearman_driver.master.metrics import open_endpoint

            self.loop_lag = self.loop_lag or LoopLag(self.turn_seconds)
            self.metrics = open_endpoint(self._metrics_source(self.loop_lag), self.selector,
                                         settings.metrics_host, settings.metrics_port)

    def open_console(self, settings: Settings) -> None:
        if not settings.console_port and not settings.console_socket:
            return
        from gearman_driver.console.server import ConsoleServer
        from gearman_driver.peercred import resolve_users

        self.console = ConsoleServer(
            self._control(), self.selector, host=settings.console_host,
            port=settings.console_port or None, socket_path=settings.console_socket,
            allowed_uids=resolve_users(settings.console_allow_users),
        )
        self.console.open()

    def probe_console(self, old: Settings, new: Settings) -> None:
        """A console address that cannot be opened refuses the reload, located at its key."""
        if all(getattr(old, k) == getattr(new, k) for k in CONSOLE_KEYS):
            return
        if not new.console_port and not new.console_socket:
            return
        from gearman_driver.console.server import probe

        try:
            probe(self.console, self._control(), self.selector, new.console_host,
                  new.console_port or None, new.console_socket)
        except CannotCreate as exc:
            key = next((k for k in CONSOLE_KEYS if str(exc).startswith(k)), "console_socket")
            raise ConfigError(f"{new.locate(key)}: {exc}") from None

    def follow(self, old: Settings, new: Settings) -> None:
        """After a reload: open the console and metrics endpoint on their new addresses."""
        for attr, keys in (("console", CONSOLE_KEYS), ("metrics", METRICS_KEYS)):
            if any(getattr(old, k) != getattr(new, k) for k in keys):
                if getattr(self, attr) is not None:
                    getattr(self, attr).close()
                    setattr(self, attr, None)
                try:
                    getattr(self, f"open_{attr}")(new)
                except OSError as exc:
                    log.error("cannot open the %s on its new address: %s", attr, exc)
        if self.console is not None and old.console_allow_users != new.console_allow_users:
            from gearman_driver.peercred import resolve_users

            self.console.allowed_uids = resolve_users(new.console_allow_users)

    def servers(self) -> list[Any]:
        """The console and the metrics endpoint, those that are open."""
        return [server for server in (self.console, self.metrics) if server is not None]

    def tick(self, now: float) -> None:
        for server in self.servers():
            server.tick(now)

    def close(self) -> None:
        for server in self.servers():
            server.close()

    def close_in_child(self) -> None:
        for server in self.servers():
            server.close_in_child()
