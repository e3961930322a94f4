"""Per-process state shared between the children and the master, without a round trip.

Like Apache's prefork scoreboard: a fixed array of slots in an anonymous shared `mmap`
made before the first fork. Each child writes only its own slot, on every job; the master
reads any slot whenever it decides or answers the console. A sequence counter (odd while a
write is in progress) lets the reader retry instead of seeing a torn record.
"""

from __future__ import annotations

import mmap
import operator
import struct
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class State(IntEnum):
    FREE = 0
    STARTING = 1
    IDLE = 2
    BUSY = 3
    LOST = 4  # idle, but the last result never reached gearmand (the connection failed)


#: The ceiling of processes per driver, and so per job (min_processes, max_processes): one
#: scoreboard slot each. Console, config schema, loader and add_job refuse more.
MAX_PROCESSES = 4096

ERROR_BYTES = 200
HANDLE_BYTES = 64
# One slot, field by field (native byte order, packed, so the child's structs and typed
# memoryviews and the master's structs agree). The child rewrites only the fields that
# change on the job path, and each of its three writes per job is one `pack_into` of
# adjacent fields (hence the order); the master reads the whole slot. The handle is a
# Pascal string (a length byte, then at most HANDLE_BYTES bytes).
_FIELDS = (
    ("seq", "I"), ("pid", "i"), ("registered", "H"), ("started", "d"), ("last_error", "d"),
    ("error_len", "H"), ("error", f"{ERROR_BYTES}s"),
    ("jobs_done", "Q"), ("last_end", "d"), ("last_end_mono", "d"),  # job finished
    ("delivered", "Q"), ("state", "B"),  # result sent
    ("job_started", "d"), ("handle", f"{HANDLE_BYTES + 1}p"),  # job started (with state)
    ("slots", "H"), ("busy_slots", "H"),  # a process of several slots (`concurrency`)
)
_LAYOUT = struct.Struct("=" + "".join(fmt for _, fmt in _FIELDS))
_OFFSET = {name: struct.calcsize("=" + "".join(fmt for _, fmt in _FIELDS[:i]))
           for i, (name, _) in enumerate(_FIELDS)}
_HEAD = struct.Struct("=I")
_STATE = struct.Struct("=B")
_REGISTERED = struct.Struct("=H")
_ERROR = struct.Struct(f"=dH{ERROR_BYTES}s")  # last_error, error_len, error
_FINISHED = struct.Struct("=Qdd")  # jobs_done, last_end, last_end_mono
_SENT = struct.Struct("=QB")  # delivered, state
_BUSY_SLOTS = struct.Struct("=H")
_SLOTS = struct.Struct("=HH")  # slots, busy_slots
_STARTED = struct.Struct(f"=Bd{HANDLE_BYTES + 1}p")  # state, job_started, handle
_pack_started, _pack_finished, _pack_sent = _STARTED.pack_into, _FINISHED.pack_into, \
    _SENT.pack_into
_time, _monotonic = time.time, time.monotonic
#: Upper bounds (seconds) of the job duration histogram's buckets, suited to jobs of a few
#: milliseconds to minutes; a last bucket (+Inf) takes the rest. Fine below 2.5 s, where
#: most jobs end, coarser above: every bucket is a line per job in each scrape.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0)
#: Functions of one job counted apart; a process group with more shares the last entry.
MAX_FUNCTIONS = 32
_N_BUCKETS = len(DURATION_BUCKETS) + 1
_FIRST_BOUND = DURATION_BUCKETS[0]  # where most jobs end: no bisect for them
# The counters follow the fields, 8-byte aligned: the duration sum, then the histogram
# buckets (not cumulative), then (complete, failed) per function index of the job.
_COUNTERS_AT = (_LAYOUT.size + 7) // 8 * 8
_COUNTERS = struct.Struct(f"=d{_N_BUCKETS + 2 * MAX_FUNCTIONS}Q")  # native: memoryview casts
#: Servers whose reconnects each process counts apart (its first ones, in its server list's
#: order); a driver with more servers does not count reconnects to the others.
MAX_SERVERS = 16
# After the counters: how often the process connected again to server i after losing it.
_RECONNECTS_AT = _COUNTERS_AT + _COUNTERS.size
_RECONNECTS = struct.Struct(f"={MAX_SERVERS}I")
_ZERO_COUNTERS = bytes(_COUNTERS.size + _RECONNECTS.size)
_COUNTER_COUNT = 1 + _N_BUCKETS + 2 * MAX_FUNCTIONS
_OUTCOME_AT = tuple(_N_BUCKETS + 2 * f for f in range(MAX_FUNCTIONS))
_STATE_AT = _OFFSET["state"]
_BUSY, _IDLE, _LOST = int(State.BUSY), int(State.IDLE), int(State.LOST)
_SLOT_SIZE = (_RECONNECTS_AT + _RECONNECTS.size + 63) // 64 * 64


def function_slot(index: int) -> int:
    """Where a job's function `index` is counted: functions past MAX_FUNCTIONS share the last."""
    return min(index, MAX_FUNCTIONS - 1)


@dataclass(slots=True)
class Counters:
    """Finished jobs of one slot, or their sum over many: what the metrics report.

    ``values`` is the slot's counter area as it is laid out: the duration sum, then
    ``buckets[i]`` counting jobs that took at most ``DURATION_BUCKETS[i]`` seconds and more
    than the bound before it (the last, +Inf, the rest), then ``outcomes[2 * f]`` and
    ``outcomes[2 * f + 1]``, the complete and failed jobs of the job's function ``f``.
    """

    values: list[float]

    @classmethod
    def zero(cls) -> Counters:
        return cls([0] * _COUNTER_COUNT)

    def add(self, values: Sequence[float]) -> None:
        """Add a slot's `Scoreboard.counters` (or another Counters' values)."""
        self.values = list(map(operator.add, self.values, values))

    @property
    def duration_sum(self) -> float:
        return self.values[0]

    @property
    def buckets(self) -> list[float]:
        return self.values[1:1 + _N_BUCKETS]

    @property
    def outcomes(self) -> list[float]:
        return self.values[1 + _N_BUCKETS:]


@dataclass(frozen=True, slots=True)
class SlotView:
    """A consistent copy of one slot, as the master sees it."""

    pid: int
    state: State
    registered: int
    jobs_done: int  # jobs whose code ran to the end in this process
    delivered: int  # results written to gearmand's socket; a dead process lost any others
    started: float
    job_started: float
    last_job_end: float
    last_job_end_mono: float
    last_error: float
    last_error_msg: str
    handle: str = ""  # of the job in hand (or the last one)
    slots: int = 1  # jobs it can hold at once
    busy_slots: int = 0  # jobs it holds now (kept only for a process of several slots)

    @property
    def busy(self) -> bool:
        return self.state == State.BUSY

    @property
    def jobs_in_hand(self) -> int:
        """How many jobs the process holds now."""
        return self.busy_slots if self.slots > 1 else int(self.state == State.BUSY)


class Scoreboard:
    """`size` slots in shared memory; slot numbers are handed out by the master."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._mem = mmap.mmap(-1, size * _SLOT_SIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._free = list(range(size - 1, -1, -1))

    # -- master side ------------------------------------------------------------------------
    def allocate(self, pid_placeholder: int = 0, slots: int = 1) -> int:
        """Reserve a free slot for a process about to be forked, which holds `slots` jobs at
        once; IndexError when full."""
        slot = self._free.pop()
        self._write(slot, pid_placeholder, State.STARTING, 0, 0, 0, time.time(),
                    0.0, 0.0, 0.0, 0.0, b"", b"", slots)
        return slot

    def release(self, slot: int) -> None:
        """Give a slot back once its process has been reaped (fold its counters first)."""
        self._write(slot, 0, State.FREE, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, b"", b"", 1)
        self._free.append(slot)

    def counters(self, slot: int) -> tuple[float, ...]:
        """A consistent copy of a slot's counter area (see `Counters`), same retry as `read`."""
        return self._consistent(slot, _COUNTERS, _COUNTERS_AT)

    def reconnects(self, slot: int) -> tuple[int, ...]:
        """How often the slot's process connected again to each of its servers (by index in
        its server list, the first MAX_SERVERS) after losing the connection."""
        return self._consistent(slot, _RECONNECTS, _RECONNECTS_AT)

    def _consistent(self, slot: int, layout: struct.Struct, at: int) -> tuple[Any, ...]:
        """`layout` unpacked at `at` in the slot, retried while the child is writing it."""
        offset = slot * _SLOT_SIZE
        mem = self._mem
        for _ in range(1000):
            seq = _HEAD.unpack_from(mem, offset)[0]
            values = layout.unpack_from(mem, offset + at)
            if seq % 2 == 0 and _HEAD.unpack_from(mem, offset)[0] == seq:
                break
        return values

    def busy(self, slot: int) -> bool:
        """Whether a slot's process is running a job (one byte: no torn read possible)."""
        return _STATE.unpack_from(self._mem, slot * _SLOT_SIZE + _STATE_AT)[0] == State.BUSY

    def full(self, slot: int) -> bool:
        """Whether every slot of a process holds a job (a process of one slot: `busy`)."""
        offset = slot * _SLOT_SIZE
        slots, busy = _SLOTS.unpack_from(self._mem, offset + _OFFSET["slots"])
        return busy >= slots if slots > 1 else self.busy(slot)

    def read(self, slot: int) -> SlotView:
        offset = slot * _SLOT_SIZE
        for _ in range(1000):
            values = _LAYOUT.unpack_from(self._mem, offset)
            if values[0] % 2 == 0 and _HEAD.unpack_from(self._mem, offset)[0] == values[0]:
                break
        (_, pid, registered, started, last_error, length, text, jobs_done, last_end,
         last_end_mono, delivered, state, job_started, handle, slots, busy_slots) = values
        return SlotView(
            pid, State(state), registered, jobs_done, delivered, started, job_started, last_end,
            last_end_mono, last_error, text[:length].decode("utf-8", "replace"),
            handle.decode("ascii", "replace"), slots, busy_slots,
        )

    # -- child side ---------------------------------------------------------------------------
    def child_writer(self, slot: int) -> SlotWriter:
        return SlotWriter(self, slot)

    def _write(
        self, slot: int, pid: int, state: int, registered: int, jobs_done: int, delivered: int,
        started: float, job_started: float, last_end: float, last_end_mono: float,
        last_error: float, error: bytes, handle: bytes, slots: int = 1,
    ) -> None:
        offset = slot * _SLOT_SIZE
        seq = _HEAD.unpack_from(self._mem, offset)[0] | 1  # odd, and the child's was even
        _HEAD.pack_into(self._mem, offset, seq)
        error = error[:ERROR_BYTES]
        _LAYOUT.pack_into(
            self._mem, offset, seq, pid, registered, started, last_error, len(error), error,
            jobs_done, last_end, last_end_mono, delivered, state, job_started, handle, slots, 0,
        )
        if state in (State.FREE, State.STARTING):  # a new or reused slot counts from zero
            start = offset + _COUNTERS_AT
            self._mem[start:start + len(_ZERO_COUNTERS)] = _ZERO_COUNTERS
        _HEAD.pack_into(self._mem, offset, (seq + 1) & 0xFFFFFFFF)


class SlotWriter:
    """The child's handle on its own slot: the only writer of that slot while the child lives,
    so it keeps the sequence counter itself and rewrites only the fields that changed. Each
    write on the job path is one `pack_into` of adjacent fields, a few counter increments
    through typed views of the slot, and the two sequence stores: the three writes of a job
    stay near 1 µs."""

    def __init__(self, board: Scoreboard, slot: int) -> None:
        self._mem = board._mem
        self._base = base = slot * _SLOT_SIZE
        self.slot = slot
        self._seq = _HEAD.unpack_from(self._mem, base)[0] & ~1  # even between writes
        self.jobs_done = 0
        self.delivered = 0
        self.busy_slots = 0
        self._busy_slots_at = base + _OFFSET["busy_slots"]
        self._job_started = time.monotonic()
        whole = memoryview(self._mem)
        self._seq_v = whole[base:base + 4].cast("I")
        self._state_at = base + _STATE_AT
        self._finished_at = base + _OFFSET["jobs_done"]
        self._sent_at = base + _OFFSET["delivered"]
        start = base + _COUNTERS_AT
        area = whole[start:start + _COUNTERS.size]
        self._sum_view = area[:8].cast("d")
        self._count_view = area[8:].cast("Q")  # buckets, then outcomes
        start = base + _RECONNECTS_AT
        self._reconnect_view = whole[start:start + _RECONNECTS.size].cast("I")

    def _begin(self) -> int:
        self._seq_v[0] = self._seq + 1  # odd: a reader retries until the write is over
        return self._base

    def _end(self) -> None:
        self._seq_v[0] = self._seq = (self._seq + 2) & 0xFFFFFFFF

    def ready(self, pid: int) -> None:
        base = self._begin()
        struct.pack_into("=i", self._mem, base + _OFFSET["pid"], pid)
        self._mem[self._state_at] = State.IDLE
        self._end()

    def reconnected(self, server: int) -> None:
        """Connected (and registered) again to the process's server `server` (its index)."""
        if server < MAX_SERVERS:
            self._begin()
            self._reconnect_view[server] += 1
            self._end()

    def set_registered(self, count: int) -> None:
        base = self._begin()
        _REGISTERED.pack_into(self._mem, base + _OFFSET["registered"], count)
        self._end()

    def job_started(self, handle: bytes = b"") -> None:
        """BUSY with this job (its handle, and when it began: the master's timeouts)."""
        seq_v = self._seq_v
        seq_v[0] = self._seq + 1  # the _begin/_end pair, inlined on the job path
        self._job_started = _monotonic()
        _pack_started(self._mem, self._state_at, _BUSY, _time(), handle)
        seq_v[0] = self._seq = (self._seq + 2) & 0xFFFFFFFF

    def job_finished(self, error: str | None = None, function: int = 0) -> None:
        """The job's code is over: count it, by `function` (see `function_slot`) and outcome
        (failed when `error` is given), and its duration into the histogram. The process
        stays BUSY until `result_sent`."""
        now, mono = _time(), _monotonic()
        done = self.jobs_done = self.jobs_done + 1
        seq_v = self._seq_v
        seq_v[0] = self._seq + 1
        _pack_finished(self._mem, self._finished_at, done, now, mono)
        duration = mono - self._job_started
        counts = self._count_view
        counts[0 if duration <= _FIRST_BOUND else bisect_left(DURATION_BUCKETS, duration)] += 1
        counts[_OUTCOME_AT[function] + (error is not None)] += 1
        self._sum_view[0] += duration
        if error is not None:
            text = " ".join(error.split()).encode("utf-8", "replace")[:ERROR_BYTES]
            _ERROR.pack_into(self._mem, self._base + _OFFSET["last_error"], now, len(text), text)
        seq_v[0] = self._seq = (self._seq + 2) & 0xFFFFFFFF

    # -- a process of several slots: the same three writes per job, counted by slot ----------
    def slot_started(self, handle: bytes = b"") -> float:
        """One more slot holds a job; returns when it began (monotonic), for slot_finished."""
        self.busy_slots += 1
        seq_v = self._seq_v
        seq_v[0] = self._seq + 1
        _pack_started(self._mem, self._state_at, _BUSY, _time(), handle)
        _BUSY_SLOTS.pack_into(self._mem, self._busy_slots_at, self.busy_slots)
        seq_v[0] = self._seq = (self._seq + 2) & 0xFFFFFFFF
        return _monotonic()

    def slot_finished(self, started: float, error: str | None = None, function: int = 0) -> None:
        """A slot's job code is over (counted as job_finished does, timed from `started`)."""
        self._job_started = started
        self.job_finished(error, function)

    def slot_sent(self, delivered: bool) -> None:
        """A slot's result was written to gearmand (or lost): the slot is free again; the
        process is IDLE once no slot holds a job, LOST if a result could not be sent."""
        self.busy_slots = max(0, self.busy_slots - 1)
        seq_v = self._seq_v
        seq_v[0] = self._seq + 1
        if delivered:
            self.delivered += 1
        state = _BUSY if self.busy_slots else (_IDLE if delivered else _LOST)
        _pack_sent(self._mem, self._sent_at, self.delivered, state)
        _BUSY_SLOTS.pack_into(self._mem, self._busy_slots_at, self.busy_slots)
        seq_v[0] = self._seq = (self._seq + 2) & 0xFFFFFFFF

    def result_sent(self, delivered: bool) -> None:
        """The backend wrote the result to gearmand's socket (or lost the connection trying).

        Only now is the job off our hands: a process that dies BUSY took a job with it,
        which gearmand hands to the next worker, so the master backs off its replacement."""
        seq_v = self._seq_v
        seq_v[0] = self._seq + 1
        if delivered:
            self.delivered += 1
            _pack_sent(self._mem, self._sent_at, self.delivered, _IDLE)
        else:
            self._mem[self._state_at] = _LOST
        seq_v[0] = self._seq = (self._seq + 2) & 0xFFFFFFFF

