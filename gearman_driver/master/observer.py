"""A small non-blocking gearmand admin client: `status` and `workers`, for the scaling rule
and for what the operator sees of each server (console `servers`, metrics, STATUS).

Ours rather than pygearman's, whose admin client desynchronises after some replies and
blocks. Each poll opens a fresh connection to every server in parallel, sends
``status\\nworkers\\n``, reads both replies (each ends with a line ``.``) and closes:
a fresh connection can never be out of step with the server, and one connect per
poll interval costs nothing. Every socket is non-blocking, has the `keepalive` options and is
registered with the master's selector; `tick` enforces a per-server deadline, so a hung
gearmand (SIGSTOPped, a black-holed host) counts as down after `timeout` while the master
keeps turning.

A server that is down never holds up the figures of the others: a poll (a *round*) is
complete once every server that was not down when it began has answered or timed out. A down
server's part of it goes on in the background until it answers or times out; it rejoins the
rounds once it answered (logged: back up). So a silent server costs the scaling rule one
`timeout` when it goes silent, and nothing after that; its figures are never in a snapshot.

Host names are resolved with a blocking `getaddrinfo` — at the first poll and, for a server
that is down, again at most every `RESOLVE_EVERY` seconds — so prefer IP addresses or names
from /etc/hosts. Every address of a name is tried in turn within the same deadline.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import selectors
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from gearman_driver.keepalive import DEFAULT_KEEPALIVE, set_keepalive

__all__ = [
    "FunctionStatus",
    "Observer",
    "Server",
    "ServerSeen",
    "Snapshot",
    "WorkerEntry",
    "driver_peers",
    "our_processes",
    "parse_status",
    "parse_workers",
    "server_label",
    "servers_summary",
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


def server_label(server: Server) -> str:
    """``HOST:PORT`` as the server is configured (an IPv6 host in brackets)."""
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


State = Literal["up", "down", "unknown"]


class ServerSeen(NamedTuple):
    """One configured server as the operator sees it: `up` (answered its last poll), `down`
    (did not) or `unknown` (not polled yet), and how many of this driver's worker processes
    its last answer listed as connected (0 unless up)."""

    server: Server
    state: State
    processes: int
    reason: str = ""  # why it is down

    @property
    def label(self) -> str:
        return server_label(self.server)


def servers_summary(seen: Sequence[ServerSeen]) -> str:
    """STATUS's part about gearmand: ``gearmand 1/2 up (down: HOST:PORT)``, naming every
    server that is down; empty before any server was polled."""
    if all(s.state == "unknown" for s in seen):
        return ""
    text = f"gearmand {sum(s.state == 'up' for s in seen)}/{len(seen)} up"
    down = [s.label for s in seen if s.state == "down"]
    return text + (f" (down: {', '.join(down)})" if down else "")


def our_processes(workers: Iterable[WorkerEntry], driver_id: str) -> int:
    """This driver's worker processes among `workers` (one server's `workers` lines).

    `driver_id` is ``<host>:<master pid>``; our client ids are ``<host>:<pid>:<master
    pid>:<job>``. Processes, not connections: after a partition gearmand may list a dead
    connection of a process beside its new one until it notices."""
    host, _, master = driver_id.rpartition(":")
    pids = set()
    for w in workers:
        parts = w.client_id.split(":", 3)
        if len(parts) == 4 and parts[0] == host and parts[2] == master:
            pids.add(parts[1])
    return len(pids)


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


class _Last(NamedTuple):
    """A server's last answer: up or not (and why), the `workers` lines it listed."""

    up: bool
    reason: str
    workers: tuple[WorkerEntry, ...]
    serial: int = 0  # of the _Poll it came from


_NOT_YET = _Last(True, "not polled yet", ())
_SERIALS = itertools.count(1)


class _Poll:
    """One server's part of a poll: connect, send, read two replies. Never blocks."""

    def __init__(self, server: Server, deadline: float) -> None:
        self.server = server
        self.serial = next(_SERIALS)
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
        keepalive: float = DEFAULT_KEEPALIVE,
        log: logging.Logger | None = None,
        on_snapshot: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.servers: tuple[Server, ...] = tuple(dict.fromkeys((h, int(p)) for h, p in servers))
        if not self.servers:
            raise ValueError("Observer needs at least one server")
        self.selector = selector
        self.timeout = timeout
        self.keepalive = keepalive  # the master's connections are probed too
        self.log = log or logging.getLogger("gearman_driver.observer")
        self.on_snapshot = on_snapshot
        self.snapshot: Snapshot | None = None
        self._polls: list[_Poll] = []  # the round in progress
        self._awaited: set[Server] = set()  # its servers that were not down when it began
        self._background: dict[Server, _Poll] = {}  # down servers still being tried
        self._started = 0.0
        self._last: dict[Server, _Last] = {}
        self._addrs: dict[Server, tuple[float, list[_Addr]]] = {}

    @property
    def in_flight(self) -> bool:
        """A round is in progress (down servers tried in the background do not count)."""
        return bool(self._polls)

    def seen(self, driver_id: str) -> list[ServerSeen]:
        """Every configured server's state after its last poll, in the configured order."""
        result = []
        for server in self.servers:
            last = self._last.get(server)
            if last is None:
                result.append(ServerSeen(server, "unknown", 0))
            elif last.up:
                result.append(ServerSeen(server, "up", our_processes(last.workers, driver_id)))
            else:
                result.append(ServerSeen(server, "down", 0, last.reason))
        return result

    def _is_up(self, server: Server) -> bool:
        """Up, or not polled yet (a round waits for it)."""
        last = self._last.get(server)
        return last is None or last.up

    def _reason(self, server: Server) -> str:
        last = self._last.get(server)
        return last.reason if last is not None else "not polled yet"

    # -- the poll ------------------------------------------------------------------------

    def start_poll(self, now: float) -> bool:
        """Begin a round: poll every server (but one still tried in the background); False
        if the previous round has not finished."""
        if self._polls:
            return False
        self._started = now
        self._polls = [_Poll(server, now + self.timeout) for server in self.servers
                       if server not in self._background]
        self._awaited = {poll.server for poll in self._polls if self._is_up(poll.server)}
        for poll in self._polls:
            self._connect(poll, now)
        return True

    def tick(self, now: float) -> None:
        """Fail servers past their deadline; complete the round once every awaited server
        is done."""
        for poll in [*self._polls, *self._background.values()]:
            if not poll.done and now >= poll.deadline:
                self._fail(poll, f"no answer within {self.timeout:g} s ({poll.stage})")
        self._maybe_complete()

    def close(self) -> None:
        """Abandon every poll in flight: unregister and close its sockets."""
        for poll in [*self._polls, *self._background.values()]:
            self._release(poll)
        self._polls = []
        self._background = {}

    def close_in_child(self) -> None:
        """Close our sockets after fork without touching the selector.

        The child shares the master's epoll instance; unregistering there would remove the
        master's registrations.
        """
        for poll in [*self._polls, *self._background.values()]:
            if poll.sock is not None:
                poll.sock.close()
                poll.sock = None
        self._polls = []
        self._background = {}

    # -- per-server steps ----------------------------------------------------------------

    def _resolve(self, server: Server, now: float) -> list[_Addr]:
        """Cached addresses; a down server's name is looked up again every RESOLVE_EVERY s."""
        cached = self._addrs.get(server)
        if cached is not None:
            when, addrs = cached
            fresh = now - when < RESOLVE_EVERY
            if addrs and (fresh or self._is_up(server)):
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
            set_keepalive(sock, self.keepalive)
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
        """Note every poll that ended; once every awaited server of the round is done, the
        snapshot (its unfinished polls of down servers go on in the background)."""
        for server, poll in list(self._background.items()):
            if poll.done:
                del self._background[server]
                self._note(poll)
                if self._polls:  # it answered (or gave up) during this round: part of it
                    self._polls.append(poll)
        if not self._polls or not all(p.done for p in self._polls if p.server in self._awaited):
            return
        polls, self._polls = self._polls, []
        up: list[_Poll] = []
        down: dict[Server, str] = {}
        for poll in polls:
            if not poll.done:
                self._background[poll.server] = poll
                down[poll.server] = self._reason(poll.server)
                continue
            if poll.error is None:
                up.append(poll)
            else:
                down[poll.server] = poll.error
            if self._last.get(poll.server, _NOT_YET).serial != poll.serial:
                self._note(poll)
        for server in self._background.keys() - down.keys():  # tried since an earlier round
            down[server] = self._reason(server)
        # parse_status sums a function that appears more than once: the sum across servers.
        functions = parse_status(line for poll in up for line in poll.replies[0])
        workers = [w for poll in up for w in self._last[poll.server].workers]
        self.snapshot = Snapshot(
            taken_at=self._started,
            servers_up=tuple(poll.server for poll in up),
            servers_down=tuple(server for server in self.servers if server in down),
            functions=MappingProxyType(functions),
            workers=tuple(workers),
            down_reasons=MappingProxyType(down),
        )
        if self.on_snapshot is not None:
            self.on_snapshot(self.snapshot)

    def _note(self, poll: _Poll) -> None:
        """Keep what the server said; log state transitions only, so a server down for hours
        logs one line, not thousands."""
        server, error = poll.server, poll.error
        is_up = error is None
        last = self._last.get(server)
        workers = tuple(parse_workers(poll.replies[1], server)) if is_up else ()
        self._last[server] = _Last(is_up, error or "", workers, poll.serial)
        name = server_label(server)
        if not is_up and (last is None or last.up):
            self.log.warning("gearmand %s is down: %s", name, error)
        elif is_up and last is not None and not last.up:
            self.log.info("gearmand %s is back up", name)
