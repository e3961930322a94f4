"""Per-process state shared between the children and the master, without a round trip.

Like Apache's prefork scoreboard: a fixed array of slots in an anonymous shared `mmap`
made before the first fork. Each child writes only its own slot, on every job; the master
reads any slot whenever it decides or answers the console. A sequence counter (odd while a
write is in progress) lets the reader retry instead of seeing a torn record.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass
from enum import IntEnum


class State(IntEnum):
    FREE = 0
    STARTING = 1
    IDLE = 2
    BUSY = 3


ERROR_BYTES = 200
HANDLE_BYTES = 64
# seq, pid, state, registered, jobs_done, started, job_started, last_end, last_end_mono,
# last_error, error length, error text, handle length, handle of the job in hand
_LAYOUT = struct.Struct(f"<IiBxHQdddddH{ERROR_BYTES}sH{HANDLE_BYTES}s")
_HEAD = struct.Struct("<I")
_STATE_OFFSET = 8  # seq (4) + pid (4)
_SLOT_SIZE = (_LAYOUT.size + 63) // 64 * 64


@dataclass(frozen=True, slots=True)
class SlotView:
    """A consistent copy of one slot, as the master sees it."""

    pid: int
    state: State
    registered: int
    jobs_done: int
    started: float
    job_started: float
    last_job_end: float
    last_job_end_mono: float
    last_error: float
    last_error_msg: str
    handle: str = ""  # of the job in hand (or the last one)

    @property
    def busy(self) -> bool:
        return self.state == State.BUSY


class Scoreboard:
    """`size` slots in shared memory; slot numbers are handed out by the master."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._mem = mmap.mmap(-1, size * _SLOT_SIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._free = list(range(size - 1, -1, -1))

    # -- master side ------------------------------------------------------------------------
    def allocate(self, pid_placeholder: int = 0) -> int:
        """Reserve a free slot for a process about to be forked; IndexError when full."""
        slot = self._free.pop()
        self._write(slot, pid_placeholder, State.STARTING, 0, 0, time.time(),
                    0.0, 0.0, 0.0, 0.0, b"", b"")
        return slot

    def set_pid(self, slot: int, pid: int) -> None:
        view = self.read(slot)
        self._write(
            slot, pid, view.state, view.registered, view.jobs_done, view.started,
            view.job_started, view.last_job_end, view.last_job_end_mono, view.last_error,
            view.last_error_msg.encode(), view.handle.encode(),
        )

    def release(self, slot: int) -> None:
        """Give a slot back once its process has been reaped."""
        self._write(slot, 0, State.FREE, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, b"", b"")
        self._free.append(slot)

    def read(self, slot: int) -> SlotView:
        offset = slot * _SLOT_SIZE
        for _ in range(1000):
            values = _LAYOUT.unpack_from(self._mem, offset)
            if values[0] % 2 == 0 and _HEAD.unpack_from(self._mem, offset)[0] == values[0]:
                break
        (_, pid, state, registered, jobs_done, started, job_started, last_end, last_end_mono,
         last_error, length, text, handle_length, handle) = values
        return SlotView(
            pid, State(state), registered, jobs_done, started, job_started, last_end,
            last_end_mono, last_error, text[:length].decode("utf-8", "replace"),
            handle[:handle_length].decode("ascii", "replace"),
        )

    # -- child side ---------------------------------------------------------------------------
    def child_writer(self, slot: int) -> SlotWriter:
        return SlotWriter(self, slot)

    def _write(
        self, slot: int, pid: int, state: int, registered: int, jobs_done: int, started: float,
        job_started: float, last_end: float, last_end_mono: float, last_error: float,
        error: bytes, handle: bytes,
    ) -> None:
        offset = slot * _SLOT_SIZE
        seq = _HEAD.unpack_from(self._mem, offset)[0]
        _HEAD.pack_into(self._mem, offset, seq + 1)
        error = error[:ERROR_BYTES]
        handle = handle[:HANDLE_BYTES]
        _LAYOUT.pack_into(
            self._mem, offset, seq + 1, pid, state, registered, jobs_done, started, job_started,
            last_end, last_end_mono, last_error, len(error), error, len(handle), handle,
        )
        _HEAD.pack_into(self._mem, offset, seq + 2)


class SlotWriter:
    """The child's handle on its own slot; the only writer of that slot while the child lives."""

    def __init__(self, board: Scoreboard, slot: int) -> None:
        self._board = board
        self.slot = slot
        view = board.read(slot)
        self.pid = view.pid
        self.registered = 0
        self.jobs_done = 0
        self.started = view.started
        self.busy_since = 0.0
        self.last_end = 0.0
        self.last_end_mono = 0.0
        self.last_error = 0.0
        self.error = b""
        self.handle = b""

    def _flush(self, state: State) -> None:
        self._board._write(
            self.slot, self.pid, state, self.registered, self.jobs_done, self.started,
            self.busy_since, self.last_end, self.last_end_mono, self.last_error, self.error,
            self.handle,
        )

    def ready(self, pid: int) -> None:
        self.pid = pid
        self._flush(State.IDLE)

    def set_registered(self, count: int) -> None:
        self.registered = count
        self._flush(State.IDLE)

    def job_started(self, handle: bytes = b"") -> None:
        self.busy_since = time.time()
        self.handle = handle
        self._flush(State.BUSY)

    def job_finished(self, error: str | None = None) -> None:
        now = time.time()
        self.jobs_done += 1
        self.last_end = now
        self.last_end_mono = time.monotonic()
        if error is not None:
            self.last_error = now
            self.error = " ".join(error.split()).encode("utf-8", "replace")
        self._flush(State.IDLE)
