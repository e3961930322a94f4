"""How late the master's loop turns are: the watchdog's view of the loop, as a number.

A turn should begin at most TURN_SECONDS after the one before (the selector's timeout);
anything beyond that is lag — a long turn, or a master that did not get the CPU. The worst lag
of the current and the previous window is kept, so a scrape every 15 s still sees a stall of
2 s that happened between two scrapes.
"""

from __future__ import annotations


class LoopLag:
    """Fed at the start of every turn; read by the metrics."""

    def __init__(self, period: float, window: float = 10.0) -> None:
        self.period = period
        self.window = window
        self._last: float | None = None
        self._epoch = 0
        self._current = 0.0  # worst lag of this window
        self._previous = 0.0  # worst lag of the window before

    def _roll(self, now: float) -> None:
        epoch = int(now // self.window)
        if epoch != self._epoch:
            self._previous = self._current if epoch == self._epoch + 1 else 0.0
            self._current = 0.0
            self._epoch = epoch

    def turn(self, now: float) -> None:
        self._roll(now)
        if self._last is not None:
            self._current = max(self._current, now - self._last - self.period)
        self._last = now

    def value(self, now: float) -> float:
        """The worst lag of the turns of the last one to two windows."""
        self._roll(now)
        return max(self._previous, self._current)
