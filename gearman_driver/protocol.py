"""The Gearman binary protocol as a pure codec: no sockets, no clocks, no logging.

Kept apart from the backend so the framing rules can be tested exhaustively (hypothesis)
without a server, and so test clients and fake peers reuse exactly the code the worker runs.

A packet is a 12-byte header (magic ``\\0REQ``/``\\0RES``, uint32 BE type, uint32 BE size)
followed by `size` bytes of arguments separated by NUL; the last argument may hold NULs.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")
HEADER_SIZE = HEADER.size

DEFAULT_MAX_PACKET = 256 * 1024 * 1024
"""Largest payload accepted: far above any sane job (16 MiB+ workloads pass), yet a corrupt
size field cannot make us buffer gigabytes before noticing."""
#: Room for a job's handle, function name and unique id in front of its workload (gearmand
#: caps them at 64, 512 and 64 bytes).
JOB_PREFIX_MAX = 4096
#: Not a Gearman type: what a parser made with `drop_oversize_jobs` emits for a JOB_ASSIGN or
#: JOB_ASSIGN_UNIQ larger than its limit, whose workload it read past without keeping it.
#: Arguments: handle, function, workload size in ASCII digits.
OVERSIZE_JOB = 0x10000


class ProtocolError(Exception):
    """The peer broke the framing rules; the connection cannot be trusted any more."""


class Cmd(IntEnum):
    """Packet types, numbered as in gearmand's PROTOCOL document."""

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


_Q, _S, _B = 1, 2, 3  # request only, response only, both directions

# type -> (argument count, direction)
SPEC: dict[int, tuple[int, int]] = {
    Cmd.CAN_DO: (1, _Q),
    Cmd.CANT_DO: (1, _Q),
    Cmd.RESET_ABILITIES: (0, _Q),
    Cmd.PRE_SLEEP: (0, _Q),
    Cmd.NOOP: (0, _S),
    Cmd.SUBMIT_JOB: (3, _Q),
    Cmd.JOB_CREATED: (1, _S),
    Cmd.GRAB_JOB: (0, _Q),
    Cmd.NO_JOB: (0, _S),
    Cmd.JOB_ASSIGN: (3, _S),
    Cmd.WORK_STATUS: (3, _B),
    Cmd.WORK_COMPLETE: (2, _B),
    Cmd.WORK_FAIL: (1, _B),
    Cmd.GET_STATUS: (1, _Q),
    Cmd.ECHO_REQ: (1, _Q),
    Cmd.ECHO_RES: (1, _S),
    Cmd.SUBMIT_JOB_BG: (3, _Q),
    Cmd.ERROR: (2, _S),
    Cmd.STATUS_RES: (5, _S),
    Cmd.SUBMIT_JOB_HIGH: (3, _Q),
    Cmd.SET_CLIENT_ID: (1, _Q),
    Cmd.CAN_DO_TIMEOUT: (2, _Q),
    Cmd.ALL_YOURS: (0, _Q),
    Cmd.WORK_EXCEPTION: (2, _B),
    Cmd.OPTION_REQ: (1, _Q),
    Cmd.OPTION_RES: (1, _S),
    Cmd.WORK_DATA: (2, _B),
    Cmd.WORK_WARNING: (2, _B),
    Cmd.GRAB_JOB_UNIQ: (0, _Q),
    Cmd.JOB_ASSIGN_UNIQ: (4, _S),
    Cmd.SUBMIT_JOB_HIGH_BG: (3, _Q),
    Cmd.SUBMIT_JOB_LOW: (3, _Q),
    Cmd.SUBMIT_JOB_LOW_BG: (3, _Q),
    Cmd.SUBMIT_JOB_SCHED: (8, _Q),
    Cmd.SUBMIT_JOB_EPOCH: (4, _Q),
    Cmd.SUBMIT_REDUCE_JOB: (4, _Q),
    Cmd.SUBMIT_REDUCE_JOB_BACKGROUND: (4, _Q),
    Cmd.GRAB_JOB_ALL: (0, _Q),
    Cmd.JOB_ASSIGN_ALL: (5, _S),
    Cmd.GET_STATUS_UNIQUE: (1, _Q),
    Cmd.STATUS_RES_UNIQUE: (6, _S),
}

# Plain-int lookups for the hot path (IntEnum hashing and repr are slow).
_NARGS_REQ: dict[int, int] = {int(c): n for c, (n, d) in SPEC.items() if d & _Q}
_NARGS_RES: dict[int, int] = {int(c): n for c, (n, d) in SPEC.items() if d & _S}
_JOB_ASSIGNS = frozenset({int(Cmd.JOB_ASSIGN), int(Cmd.JOB_ASSIGN_UNIQ)})
_JOB_ASSIGN_UNIQ = int(Cmd.JOB_ASSIGN_UNIQ)
_UNPACK_HEADER = HEADER.unpack_from


class Packet(NamedTuple):
    """One decoded packet; `magic` is REQ or RES, `cmd` the raw type number."""

    magic: bytes
    cmd: int
    args: tuple[bytes, ...]


def encode_packet(magic: bytes, cmd: int, *args: bytes) -> bytes:
    """Frame `args` as one packet, refusing anything the peer's parser would reject."""
    table = _NARGS_REQ if magic == REQ else _NARGS_RES if magic == RES else None
    if table is None:
        raise ValueError(f"bad magic {magic!r}")
    nargs = table.get(cmd)
    if nargs is None:
        raise ValueError(f"packet type {cmd} is not valid with magic {magic!r}")
    if len(args) != nargs:
        raise ValueError(f"packet type {cmd} takes {nargs} arguments, got {len(args)}")
    for arg in args[:-1]:
        if b"\0" in arg:
            raise ValueError(f"NUL byte in a non-final argument of packet type {cmd}")
    body = b"\0".join(args)
    if len(body) > 0xFFFFFFFF:
        raise ValueError("packet larger than 4 GiB")
    return HEADER.pack(magic, cmd, len(body)) + body


def encode_request(cmd: int, *args: bytes) -> bytes:
    """A packet as a worker or client sends it to gearmand."""
    return encode_packet(REQ, cmd, *args)


def encode_response(cmd: int, *args: bytes) -> bytes:
    """A packet as gearmand sends it (for test peers)."""
    return encode_packet(RES, cmd, *args)


class PacketParser:
    """Incremental, strict decoder: feed it bytes as they arrive, get complete packets back.

    Errors are detected as early as the bytes allow (a wrong magic after its first byte,
    a bad type or size as soon as the header is in), so garbage never makes us wait for
    more input, and at most one packet (header + `max_size`) is ever buffered.
    After a ProtocolError the parser stays broken: the stream has lost its framing.
    """

    __slots__ = ("_magic", "_table", "_max_size", "_chunks", "_have", "_need", "_error",
                 "_drop_jobs", "_dropping", "_drop_nargs", "_drop_size", "_prefix", "_skip")

    def __init__(self, magic: bytes = RES, max_size: int = DEFAULT_MAX_PACKET,
                 drop_oversize_jobs: bool = False) -> None:
        if magic not in (REQ, RES):
            raise ValueError(f"bad magic {magic!r}")
        self._magic = magic
        self._table = _NARGS_RES if magic == RES else _NARGS_REQ
        self._max_size = max_size
        self._chunks: list[bytes] = []  # undecoded bytes, joined only once a packet is whole
        self._have = 0  # bytes in _chunks
        self._need = HEADER_SIZE  # bytes _chunks must hold before decoding can progress
        self._error: ProtocolError | None = None
        self._drop_jobs = drop_oversize_jobs
        self._dropping = False  # inside an oversize job: reading its prefix, then skipping
        self._drop_nargs = 0
        self._drop_size = 0
        self._prefix: bytearray | None = None
        self._skip = 0

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a packet."""
        return self._have

    @property
    def skipping(self) -> int:
        """Bytes of an oversize job's workload still to be read and dropped."""
        return self._skip

    @property
    def wanted(self) -> int:
        """Bytes still missing before the next step can be decoded (a hint for recv sizes)."""
        return max(self._need - self._have, 1)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Add received bytes; return every packet they complete, in order."""
        if self._error is not None:
            raise self._error
        if self._dropping:
            return self._drop(memoryview(data))
        size = len(data)
        if not size:
            return []
        if self._have:
            self._chunks.append(bytes(data))
            self._have += size
            if self._have < self._need:
                if self._have < HEADER_SIZE:
                    self._check_prefix(b"".join(self._chunks), 0)
                return []
            buf = b"".join(self._chunks)
        else:
            buf = data if type(data) is bytes else bytes(data)
            if size > HEADER_SIZE:  # the job path: exactly one whole JOB_ASSIGN_UNIQ
                magic, cmd, length = _UNPACK_HEADER(buf)
                if cmd == _JOB_ASSIGN_UNIQ and magic == self._magic == RES and \
                        length == size - HEADER_SIZE and length <= self._max_size:
                    args = buf[HEADER_SIZE:].split(b"\0", 3)
                    if len(args) == 4:
                        return [Packet(magic, cmd, tuple(args))]
        try:
            return self._decode(buf)
        except ProtocolError as exc:
            self._error = exc
            self._chunks = []
            self._have = 0
            raise

    def _decode(self, buf: bytes) -> list[Packet]:
        packets: list[Packet] = []
        magic_ok = self._magic
        table = self._table
        unpack = HEADER.unpack_from
        pos = 0
        end = len(buf)
        need = HEADER_SIZE
        while True:
            left = end - pos
            if left < HEADER_SIZE:
                if left:
                    self._check_prefix(buf, pos)
                need = HEADER_SIZE
                break
            magic, cmd, size = unpack(buf, pos)
            if magic != magic_ok:
                raise ProtocolError(f"bad magic {magic!r}, expected {magic_ok!r}")
            nargs = table.get(cmd)
            if nargs is None:
                raise ProtocolError(f"unknown or misdirected packet type {cmd}")
            if size > self._max_size:
                if self._drop_jobs and cmd in _JOB_ASSIGNS:
                    self._chunks, self._have, self._need = [], 0, HEADER_SIZE
                    self._dropping, self._drop_nargs, self._drop_size = True, nargs, size
                    self._prefix = bytearray()
                    packets.extend(self._drop(memoryview(buf)[pos + HEADER_SIZE:]))
                    return packets
                raise ProtocolError(f"packet type {cmd} of {size} bytes exceeds {self._max_size}")
            if nargs == 0 and size:
                raise ProtocolError(f"packet type {cmd} takes no arguments, got {size} bytes")
            stop = pos + HEADER_SIZE + size
            if stop > end:
                need = HEADER_SIZE + size
                break
            start = pos + HEADER_SIZE
            if nargs == 0:
                args: tuple[bytes, ...] = ()
            elif nargs == 1:
                args = (buf[start:stop],)
            else:  # slice each argument straight from buf: one copy even for 16 MiB
                parts: list[bytes] = []
                for _ in range(nargs - 1):
                    nul = buf.find(b"\0", start, stop)
                    if nul < 0:
                        raise ProtocolError(
                            f"packet type {cmd} needs {nargs} arguments, got {len(parts) + 1}"
                        )
                    parts.append(buf[start:nul])
                    start = nul + 1
                parts.append(buf[start:stop])
                args = tuple(parts)
            packets.append(Packet(magic, cmd, args))
            pos = stop
        if pos < end:
            rest = buf[pos:] if pos else buf
            self._chunks = [rest]
            self._have = len(rest)
        else:
            self._chunks = []
            self._have = 0
        self._need = need
        return packets

    def _drop(self, view: memoryview) -> list[Packet]:
        """Inside an oversize job: keep its handle, function (and unique id), then read past
        its workload without buffering it; then go on decoding what follows."""
        packets: list[Packet] = []
        if self._prefix is not None:
            prefix = self._prefix
            before = len(prefix)
            prefix += view[:JOB_PREFIX_MAX - before]
            need = self._drop_nargs - 1
            if prefix.count(0) < need:
                if len(prefix) >= JOB_PREFIX_MAX:
                    raise self._fail(ProtocolError(
                        f"oversize job: no {need} arguments in its first {JOB_PREFIX_MAX} bytes"))
                return packets
            args = bytes(prefix).split(b"\0", need)[:need]
            used = sum(len(arg) + 1 for arg in args)
            view = view[used - before:]
            self._prefix = None
            self._skip = self._drop_size - used
            packets.append(Packet(self._magic, OVERSIZE_JOB,
                                  (args[0], args[1], b"%d" % self._skip)))
        taken = min(self._skip, len(view))
        self._skip -= taken
        if self._skip:
            return packets
        self._dropping = False
        if len(view) > taken:
            packets.extend(self.feed(view[taken:]))
        return packets

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        self._error = exc
        self._dropping = False
        return exc

    def _check_prefix(self, buf: bytes, pos: int) -> None:
        """Reject a wrong magic before the header is complete, so garbage never stalls us."""
        head = buf[pos : pos + 4]
        if not self._magic.startswith(head):
            self._error = ProtocolError(f"bad magic {head!r}, expected {self._magic!r}")
            self._chunks = []
            self._have = 0
            raise self._error


__all__ = [
    "DEFAULT_MAX_PACKET",
    "HEADER",
    "HEADER_SIZE",
    "JOB_PREFIX_MAX",
    "OVERSIZE_JOB",
    "REQ",
    "RES",
    "SPEC",
    "Cmd",
    "Packet",
    "PacketParser",
    "ProtocolError",
    "encode_packet",
    "encode_request",
    "encode_response",
]
