"""The master's listening servers: the management console and the metrics endpoint, each
open only when configured, both in the master's selector loop.

Owned here so that the master's loop only ticks, closes and drops them in a child. A reload
that moves either one binds the new addresses first (`prepare`): one that cannot be opened
refuses the reload at its key, and the endpoint keeps serving where it was. Only a reload
that is applied moves them (`commit`); the connections open at that moment go on, so the
client that asked for the reload through the console gets its answer there.
"""

from __future__ import annotations

import logging
import selectors
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gearman_driver.config.settings import ConfigError, Settings
from gearman_driver.paths import CannotCreate
from gearman_driver.streamserver import Listener

if TYPE_CHECKING:
    from gearman_driver.console.commands import ReloadWaiter
    from gearman_driver.console.control import DriverControl
    from gearman_driver.console.server import ConsoleServer
    from gearman_driver.master.looplag import LoopLag
    from gearman_driver.master.metrics import MetricsSource
    from gearman_driver.master.metrics_http import MetricsServer

log = logging.getLogger("gearman_driver.reload")

CONSOLE_KEYS = ("console_socket", "console_port", "console_host")
METRICS_KEYS = ("metrics_port", "metrics_host")


@dataclass
class Moves:
    """What a reload will change of the endpoints: the listeners bound for their new
    addresses, made before the reload is applied and let go of if it is refused."""

    console: list[Listener] | None = None  # None: the console stays as it is
    metrics: list[Listener] | None = None  # None: unchanged; []: switched off
    made: list[Listener] = field(default_factory=list)  # bound for this reload

    def discard(self) -> None:
        for listener in self.made:
            listener.close()
        self.made.clear()


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
        self.console: ConsoleServer | None = None
        self.metrics: MetricsServer | None = None
        self.loop_lag: LoopLag | None = None  # fed only while a metrics endpoint reads it

    def open(self, settings: Settings) -> None:
        if settings.console_port or settings.console_socket:
            self._console_server(settings).open()
        if settings.metrics_port:
            self._metrics_server(settings).open()

    def _console_server(self, settings: Settings) -> ConsoleServer:
        if self.console is None:
            from gearman_driver.console.server import ConsoleServer
            from gearman_driver.peercred import resolve_users

            self.console = ConsoleServer(
                self._control(), self.selector, host=settings.console_host,
                port=settings.console_port or None, socket_path=settings.console_socket,
                allowed_uids=resolve_users(settings.console_allow_users),
            )
        return self.console

    def _metrics_server(self, settings: Settings) -> MetricsServer:
        if self.metrics is None:  # else not even imported: metrics off costs nothing
            from gearman_driver.master.looplag import LoopLag
            from gearman_driver.master.metrics import new_endpoint

            self.loop_lag = self.loop_lag or LoopLag(self.turn_seconds)
            self.metrics = new_endpoint(self._metrics_source(self.loop_lag), self.selector,
                                        settings.metrics_host, settings.metrics_port)
        return self.metrics

    def prepare(self, old: Settings, new: Settings) -> Moves:
        """Bind what `new` needs beyond what is open; a ConfigError located at the key says
        why an address cannot be opened (nothing is left bound then)."""
        moves = Moves()
        current = {id(x) for server in self.servers() for x in server.listeners}
        try:
            if any(getattr(old, k) != getattr(new, k) for k in CONSOLE_KEYS):
                moves.console = []
                if new.console_port or new.console_socket:
                    moves.console = self._console_server(new).prepare(
                        new.console_host, new.console_port or None, new.console_socket)
                    moves.made += [x for x in moves.console if id(x) not in current]
            if any(getattr(old, k) != getattr(new, k) for k in METRICS_KEYS):
                moves.metrics = []
                if new.metrics_port:
                    moves.metrics = self._metrics_server(new).prepare(new.metrics_host,
                                                                      new.metrics_port)
                    moves.made += [x for x in moves.metrics if id(x) not in current]
        except CannotCreate as exc:
            moves.discard()
            self._forget_unopened()
            keys = CONSOLE_KEYS + METRICS_KEYS
            key = next((k for k in keys if str(exc).startswith(k)), "console_socket")
            raise ConfigError(f"{new.locate(key)}: {exc}") from None
        return moves

    def _forget_unopened(self) -> None:
        """A server made for a refused reload, never opened, is dropped again."""
        if self.console is not None and not self.console.listeners and \
                not self.console.conns:
            self.console = None
        if self.metrics is not None and not self.metrics.listeners:
            self.metrics.close()
            self.metrics = None

    def commit(self, moves: Moves, old: Settings, new: Settings) -> None:
        """A reload was applied: the endpoints listen where `new` says."""
        if moves.console is not None and self.console is not None:
            self.console.commit(moves.console, new.console_host, new.console_port or None,
                                new.console_socket)
        if moves.metrics is not None and self.metrics is not None:
            if moves.metrics:
                self.metrics.commit(moves.metrics, new.metrics_host, new.metrics_port)
            else:  # switched off: scrapers reconnect to nothing
                self.metrics.close()
                self.metrics = None
        moves.made.clear()
        if self.console is not None and old.console_allow_users != new.console_allow_users:
            from gearman_driver.peercred import resolve_users

            self.console.allowed_uids = resolve_users(new.console_allow_users)

    def adopt(self, fd: int, settings: Settings) -> ReloadWaiter:
        """A console client the master before a re-exec left waiting for a reload's outcome
        (served by the console here, even one that no longer listens anywhere)."""
        from gearman_driver.console.commands import ReloadWaiter

        return ReloadWaiter(self._console_server(settings).adopt(fd))

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
