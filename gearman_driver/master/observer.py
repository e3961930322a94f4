"""A small non-blocking gearmand admin client: `status` and `workers`, for the scaling rule.

Ours rather than pygearman's, whose admin client desynchronises after some replies and
blocks. Each poll opens a fresh connection to every server in parallel, sends
``status\\nworkers\\n``, reads both replies (each ends with a line ``.``) and closes:
a fresh connection can never be out of step with the server, and one connect per
poll interval costs nothing. Every socket is non-blocking and registered with the master's
selector; `tick` enforces a per-server deadline, so a hung gearmand (SIGSTOPped, a black-holed
host) counts as down after `timeout` while the master keeps turning.

Host names are resolved with a blocking `getaddrinfo` — at the first poll and, for a server
that is down, again at most every `RESOLVE_EVERY` seconds — so prefer IP addresses or names
from /etc/hosts. Every address of a name is tried in turn within the same deadline.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = [
    "FunctionStatus",
    "Observer",
    "Server",
    "Snapshot",
    "WorkerEntry",
    "driver_peers",
    "parse_status",
    "parse_workers",
]

Server = tuple[str, int]
_Addr = tuple[int, tuple[Any, ...]]  # (address family, sockaddr)

#: A server sending more than this in one poll is misbehaving; it counts as down.
MAX_REPLY_BYTES = 16 * 1024 * 1024
RESOLVE_EVERY = 30.0
_REQUEST = b"status\nworkers\n"
_RECV_SIZE = 256 * 1024


class FunctionStatus(NamedTuple):
    """One line of `status`, or its sum across servers. `total` includes running jobs.

    Tuples (not dataclasses) because a poll makes one per function and one WorkerEntry per
    worker every interval: with hundreds of functions that was most of the idle master's CPU.
    """

    name: str
    total: int
    running: int
    available_workers: int

    @property
    def waiting(self) -> int:
        """Jobs queued and not yet taken by a worker."""
        return max(0, self.total - self.running)


class WorkerEntry(NamedTuple):
    """One line of `workers`: a connection to `server` and the functions it can do."""

    server: Server
    fd: int
    ip: str
    client_id: str
    functions: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    """What every server said in one poll; figures summed across the servers that were up."""

    taken_at: float  # monotonic time at which the poll began
    servers_up: tuple[Server, ...]
    servers_down: tuple[Server, ...]
    functions: Mapping[str, FunctionStatus]
    workers: tuple[WorkerEntry, ...]
    #: Why each server in `servers_down` is down.
    down_reasons: Mapping[Server, str] = field(default_factory=lambda: MappingProxyType({}))

    def waiting(self, functions: Iterable[str]) -> int:
        """Σ(total − running) over `functions`, the scaling rule's `waiting`."""
        return sum(self.functions[f].waiting for f in set(functions) if f in self.functions)


def parse_status(lines: Iterable[str]) -> dict[str, FunctionStatus]:
    """Parse `status` lines (without the final ``.``); garbage lines are skipped."""
    result: dict[str, FunctionStatus] = {}
    for line in lines:
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 4 or not parts[0]:
            continue
        try:
            total, running, workers = int(parts[1]), int(parts[2]), int(parts[3])
        except ValueError:
            continue
        if min(total, running, workers) < 0:
            continue
        old = result.get(parts[0])
        if old is not None:  # the same function from several servers (or a confused one)
            total, running = total + old.total, running + old.running
            workers += old.available_workers
        result[parts[0]] = FunctionStatus(parts[0], total, running, workers)
    return result


def parse_workers(lines: Iterable[str], server: Server = ("", 0)) -> list[WorkerEntry]:
    """Parse `workers` lines (``FD IP CLIENT-ID : FUNC ...``); garbage lines are skipped.

    The separator is the first ``:`` token after the client id, so an IPv6 address is fine.
    """
    result: list[WorkerEntry] = []
    for line in lines:
        tokens = line.split()
        try:
            colon = tokens.index(":", 3)
            fd = int(tokens[0])
        except (ValueError, IndexError):
            continue
        client_id = " ".join(tokens[2:colon])
        result.append(WorkerEntry(server, fd, tokens[1], client_id, tuple(tokens[colon + 1 :])))
    return result


def driver_peers(snapshot: Snapshot, function_names: Iterable[str]) -> set[str]:
    """Driver ids ``<host>:<master pid>`` with a worker registered for any of the functions.

    Our workers' client ids are ``<host>:<pid>:<master pid>:<job name>`` (the job name may
    itself contain ``:``); other client ids are someone else's workers and are ignored.
    """
    wanted = set(function_names)
    peers: set[str] = set()
    for w in snapshot.workers:
        if wanted.isdisjoint(w.functions):
            continue
        parts = w.client_id.split(":", 3)
        if len(parts) == 4 and parts[0] and parts[1].isdigit() and parts[2].isdigit():
            peers.add(f"{parts[0]}:{parts[2]}")
    return peers


class _Poll:
    """One server's part of a poll: connect, send, read two replies. Never blocks."""

    def __init__(self, server: Server, deadline: float) -> None:
        self.server = server
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self.stage = "connecting"
        self.out = _REQUEST
        self.partial = bytearray()
        self.received = 0
        self.replies: list[list[str]] = [[]]
        self.error: str | None = None
        self.addrs: list[_Addr] = []
        self.connect_error = ""

    @property
    def done(self) -> bool:
        return self.error is not None or self.stage == "done"

    def feed(self, data: bytes) -> None:
        """Split into lines; a ``.`` line ends a reply, an ``ERR`` line fails the poll."""
        self.received += len(data)
        if self.received > MAX_REPLY_BYTES:
            self.error = f"reply larger than {MAX_REPLY_BYTES} bytes"
            return
        self.partial += data
        if b"\n" not in data:  # an endless line must not cost a copy per recv
            return
        complete, _, rest = bytes(self.partial).rpartition(b"\n")
        self.partial = bytearray(rest)
        # decoded at once: a newline never falls inside a UTF-8 sequence
        for line in complete.decode("utf-8", "replace").split("\n"):
            line = line.rstrip("\r")
            if line == ".":
                if len(self.replies) == 2:
                    self.stage = "done"
                    return
                self.replies.append([])
            elif line.startswith("ERR "):
                self.error = f"server said {line[:200]!r}"
                return
            else:
                self.replies[-1].append(line)


class Observer:
    """Polls every gearmand with `status` and `workers` through the master's selector.

    `on_snapshot` runs from a selector handler or from `tick`, never from inside `start_poll`.
    """

    def __init__(
        self,
        servers: Sequence[Server],
        selector: selectors.BaseSelector,
        *,
        timeout: float = 2.0,
        log: logging.Logger | None = None,
        on_snapshot: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.servers: tuple[Server, ...] = tuple(dict.fromkeys((h, int(p)) for h, p in servers))
        if not self.servers:
            raise ValueError("Observer needs at least one server")
        self.selector = selector
        self.timeout = timeout
        self.log = log or logging.getLogger("gearman_driver.observer")
        self.on_snapshot = on_snapshot
        self.snapshot: Snapshot | None = None
        self._polls: list[_Poll] = []
        self._started = 0.0
        self._up: dict[Server, bool] = {}
        self._addrs: dict[Server, tuple[float, list[_Addr]]] = {}

    @property
    def in_flight(self) -> bool:
        return bool(self._polls)

    # -- the poll ------------------------------------------------------------------------

    def start_poll(self, now: float) -> bool:
        """Begin polling every server; False if the previous poll has not finished."""
        if self._polls:
            return False
        self._started = now
        self._polls = [_Poll(server, now + self.timeout) for server in self.servers]
        for poll in self._polls:
            self._connect(poll, now)
        return True

    def tick(self, now: float) -> None:
        """Fail servers past their deadline; complete the poll once every server is done."""
        for poll in self._polls:
            if not poll.done and now >= poll.deadline:
                self._fail(poll, f"no answer within {self.timeout:g} s ({poll.stage})")
        self._maybe_complete()

    def close(self) -> None:
        """Abandon any poll in flight: unregister and close its sockets."""
        for poll in self._polls:
            self._release(poll)
        self._polls = []

    def close_in_child(self) -> None:
        """Close our sockets after fork without touching the selector.

        The child shares the master's epoll instance; unregistering there would remove the
        master's registrations.
        """
        for poll in self._polls:
            if poll.sock is not None:
                poll.sock.close()
                poll.sock = None
        self._polls = []

    # -- per-server steps ----------------------------------------------------------------

    def _resolve(self, server: Server, now: float) -> list[_Addr]:
        """Cached addresses; a down server's name is looked up again every RESOLVE_EVERY s."""
        cached = self._addrs.get(server)
        if cached is not None:
            when, addrs = cached
            fresh = now - when < RESOLVE_EVERY
            if addrs and (fresh or self._up.get(server, True)):
                return addrs
            if not addrs and fresh:
                raise OSError(f"cannot resolve {server[0]!r}")
        try:
            infos = socket.getaddrinfo(server[0], server[1], type=socket.SOCK_STREAM)
        except OSError:
            self._addrs[server] = (now, [])
            raise
        addrs = [(info[0], info[4]) for info in infos]
        self._addrs[server] = (now, addrs)
        return addrs

    def _connect(self, poll: _Poll, now: float) -> None:
        try:
            poll.addrs = list(self._resolve(poll.server, now))
        except OSError as exc:
            self._fail(poll, f"cannot resolve: {exc}")
            return
        self._next_addr(poll)

    def _next_addr(self, poll: _Poll) -> None:
        """Connect to the next address (``localhost`` may be ::1 first, gearmand on 127.0.0.1)."""
        self._release(poll)
        reason = poll.connect_error or "no address"
        while poll.addrs:
            family, addr = poll.addrs.pop(0)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                reason = str(exc)
                continue
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err in (0, errno.EINPROGRESS, errno.EAGAIN):
                poll.sock = sock
                poll.stage = "connecting"
                self.selector.register(sock, selectors.EVENT_WRITE, lambda mask: self._ready(poll))
                return
            sock.close()
            reason = os.strerror(err)
        self._fail(poll, f"cannot connect: {reason}")

    def _ready(self, poll: _Poll) -> None:
        """Selector handler for one server's socket; advances its stage."""
        sock = poll.sock
        if sock is None or poll.done:
            return
        try:
            if poll.stage == "connecting":
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    poll.connect_error = os.strerror(err)
                    self._next_addr(poll)
                    self._maybe_complete()
                    return
                poll.stage = "sending"
            if poll.stage == "sending":
                poll.out = poll.out[sock.send(poll.out) :]
                if not poll.out:
                    poll.stage = "reading"
                    self.selector.modify(sock, selectors.EVENT_READ, lambda mask: self._ready(poll))
                return
            data = sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(poll, exc.strerror or str(exc))
            self._maybe_complete()
            return
        if not data:
            poll.error = "connection closed before both replies"
        else:
            poll.feed(data)
        if poll.done:
            self._release(poll)
            self._maybe_complete()

    def _fail(self, poll: _Poll, reason: str) -> None:
        if poll.error is None:
            poll.error = reason
        self._release(poll)

    def _release(self, poll: _Poll) -> None:
        if poll.sock is None:
            return
        try:
            self.selector.unregister(poll.sock)
        except (KeyError, ValueError):
            pass
        poll.sock.close()
        poll.sock = None

    # -- completion ----------------------------------------------------------------------

    def _maybe_complete(self) -> None:
        if not self._polls or not all(p.done for p in self._polls):
            return
        polls, self._polls = self._polls, []
        up: list[_Poll] = []
        down: dict[Server, str] = {}
        for poll in polls:
            if poll.error is None:
                up.append(poll)
            else:
                down[poll.server] = poll.error
            self._note(poll.server, poll.error)
        # parse_status sums a function that appears more than once: the sum across servers.
        functions = parse_status(line for poll in up for line in poll.replies[0])
        workers = [w for poll in up for w in parse_workers(poll.replies[1], poll.server)]
        self.snapshot = Snapshot(
            taken_at=self._started,
            servers_up=tuple(poll.server for poll in up),
            servers_down=tuple(down),
            functions=MappingProxyType(functions),
            workers=tuple(workers),
            down_reasons=MappingProxyType(down),
        )
        if self.on_snapshot is not None:
            self.on_snapshot(self.snapshot)

    def _note(self, server: Server, error: str | None) -> None:
        """Log state transitions only, so a server down for hours logs one line, not thousands."""
        is_up = error is None
        was = self._up.get(server)
        self._up[server] = is_up
        name = f"{server[0]}:{server[1]}"
        if not is_up and was is not False:
            self.log.warning("gearmand %s is down: %s", name, error)
        elif is_up and was is False:
            self.log.info("gearmand %s is back up", name)
