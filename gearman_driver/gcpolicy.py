"""The garbage collector's policy for a forking daemon, in one place.

- Off in the master from before any worker code is imported: loading builds the heap the
  children share copy-on-write, and a collection there would touch (and so copy) its pages.
- Frozen before each fork (`gc.freeze`): what exists then is shared, and the children's
  collections never walk it. GEARMAN_DRIVER_NO_GC_FREEZE=1 turns this off (to measure it).
- On in each child, for the garbage its jobs make.
- The master collects its own garbage once a minute; frozen objects are skipped.
"""

from __future__ import annotations

import gc
import os

MASTER_COLLECT_EVERY = 60.0


def off_while_loading() -> None:
    """Before worker code is imported (the CLI) or worker objects are built (`Driver.load`)."""
    gc.disable()


def before_fork() -> None:
    """What is shared now stays untouched by the children's collections."""
    if os.environ.get("GEARMAN_DRIVER_NO_GC_FREEZE", "") in ("", "0"):
        gc.freeze()


def in_child() -> None:
    gc.enable()


class MasterCollection:
    """The master's own garbage, collected at most once per MASTER_COLLECT_EVERY seconds."""

    def __init__(self, now: float) -> None:
        self._last = now

    def tick(self, now: float) -> None:
        if now - self._last > MASTER_COLLECT_EVERY:
            gc.collect()
            self._last = now
