"""``gearman-driver-console``: talk to masters' consoles, like gearman_driver_console.pl.

One-shot when given words (for scripts: exit 0, 1 if any reply was ``ERR``, 2 if a console
cannot be reached, 64 on a usage error); otherwise an interactive prompt with readline
editing and a history file. Plain blocking sockets with timeouts: this is a separate
process, not the master.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from gearman_driver.console.commands import COMMANDS
from gearman_driver.ports import CONSOLE_PORT

DEFAULT_SERVER = f"localhost:{CONSOLE_PORT}"
TIMEOUT = 10.0
MAX_REPLY_LINE = 1 << 20
EX_OK, EX_ERR, EX_UNREACHABLE, EX_USAGE = 0, 1, 2, 64
HISTORY_ENV = "GEARMAN_DRIVER_HISTORY"
HISTORY_FILE = "~/.gearman_driver_history"


class Unreachable(Exception):
    """A console could not be connected to, or stopped answering."""


class UsageError(Exception):
    """Bad command line; exit 64 (EX_USAGE)."""


#: The longest --timeout accepted: a day (a socket timeout must fit the kernel's timeval).
MAX_TIMEOUT = 86400.0


def timeout_seconds(text: str) -> float:
    """``--timeout``'s type: a finite number of seconds, > 0 and at most MAX_TIMEOUT (nan,
    inf and 1e400 are usage errors, not tracebacks)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= MAX_TIMEOUT:  # also false for nan
        raise argparse.ArgumentTypeError(f"expected seconds > 0 and <= {MAX_TIMEOUT:g}, "
                                         f"got {text!r}")
    return value


def socket_path(text: str) -> str:
    """``--socket``'s type: a path, never empty (an empty one would silently mean "none")."""
    if not text:
        raise argparse.ArgumentTypeError("expected the path of a console socket, got ''")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"expected a path without NUL, got {text!r}")
    return text


@dataclass(frozen=True)
class Target:
    """Where one console listens: (host, port) or a unix socket path."""

    label: str
    host: str = ""
    port: int = 0
    path: str | None = None


def parse_console_address(spec: str) -> Target:
    """``host``, ``host:port``, ``[v6addr]`` or ``[v6addr]:port``."""
    host, port_text = spec, ""
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0 or (spec[end + 1 :] and not spec[end + 1 :].startswith(":")):
            raise UsageError(f"bad server address: {spec!r}")
        host, port_text = spec[1:end], spec[end + 2 :]
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
    if not host:
        raise UsageError(f"bad server address: {spec!r} (no host)")
    port = CONSOLE_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"bad port in {spec!r}")
        port = int(port_text)
    label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Target(label, host, port)


class Session:
    """One connection to one console, opened lazily and reopened once if the server hung up
    while we were idle (it closes idle connections)."""

    def __init__(self, target: Target, timeout: float = TIMEOUT) -> None:
        self.target = target
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.reader: IO[bytes] | None = None

    def connect(self) -> None:
        try:
            if self.target.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                try:
                    sock.connect(self.target.path)
                except BaseException:
                    sock.close()
                    raise
            else:
                addr = (self.target.host, self.target.port)
                sock = socket.create_connection(addr, timeout=self.timeout)
        except OSError as exc:
            raise Unreachable(f"cannot reach {self.target.label}: {_reason(exc)}") from exc
        self.sock = sock
        self.reader = sock.makefile("rb")

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self.reader = None

    def request(self, line: str) -> list[str]:
        """Send one command and return its reply lines without the final ``.``."""
        reused = self.sock is not None
        try:
            return self._request(line)
        except _NoReply:
            if not reused:
                raise
            return self._request(line)  # the server may have closed our idle connection

    def _request(self, line: str) -> list[str]:
        if self.sock is None:
            self.connect()
        assert self.sock is not None and self.reader is not None
        lines: list[str] = []
        try:
            self.sock.sendall(line.encode() + b"\n")
            if line.split()[:1] == ["quit"]:
                self.close()
                return []
            while True:
                raw = self.reader.readline(MAX_REPLY_LINE)
                if not raw:
                    raise ConnectionResetError(0, "connection closed by the console")
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                if text == ".":
                    return lines
                lines.append(text)
        except OSError as exc:
            self.close()
            if lines:  # a partial reply: not safe to send the command again
                raise Unreachable(f"{self.target.label}: {_reason(exc)} mid-reply") from exc
            raise _NoReply(f"cannot reach {self.target.label}: {_reason(exc)}") from exc


def query(address: str, command: str, timeout: float = TIMEOUT) -> list[str]:
    """One command to the console at ``host:port``; its reply lines without the final ``.``.

    For scripts and checks: raises Unreachable when the console cannot be reached."""
    session = Session(parse_console_address(address), timeout)
    try:
        return session.request(command)
    finally:
        session.close()


class _NoReply(Unreachable):
    """Failed before any reply line arrived, so sending again cannot double a command."""


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def run_command(sessions: Sequence[Session], line: str, out: IO[str], err: IO[str]) -> int:
    """Send ``line`` to every console; prefix output with ``host:port> `` when there are
    several. Returns the worst exit status seen."""
    status = EX_OK
    prefix = len(sessions) > 1
    for session in sessions:
        try:
            reply = session.request(line)
        except Unreachable as exc:
            print(f"gearman-driver-console: {exc}", file=err)
            status = max(status, EX_UNREACHABLE)
            continue
        for text in reply:
            print(f"{session.target.label}> {text}" if prefix else text, file=out)
            if text.startswith("ERR "):
                status = max(status, EX_ERR)
    out.flush()
    return status


def _history_path() -> str:
    return os.path.expanduser(os.environ.get(HISTORY_ENV) or HISTORY_FILE)


def interactive(sessions: Sequence[Session], out: IO[str], err: IO[str]) -> int:
    """A prompt with line editing, completion of command names and a persistent history."""
    reachable = 0
    for session in sessions:
        try:
            session.connect()
            reachable += 1
        except Unreachable as exc:
            print(f"gearman-driver-console: {exc}", file=err)
    if not reachable:
        return EX_UNREACHABLE
    history = _history_path()
    readline = None
    try:
        import readline as _readline

        readline = _readline
        readline.set_history_length(1000)
        names = sorted(COMMANDS)
        readline.set_completer(
            lambda text, n: ([c for c in names if c.startswith(text)] + [None])[n]
        )
        readline.parse_and_bind("tab: complete")
        if os.path.exists(history):
            readline.read_history_file(history)
    except (ImportError, OSError):
        pass
    prompt = f"{sessions[0].target.label}> " if len(sessions) == 1 else "gearman-driver> "
    tty = sys.stdin.isatty()
    try:
        while True:
            try:
                line = input(prompt)
            except EOFError:
                print(file=out)
                break
            except KeyboardInterrupt:
                print(file=out)
                continue
            words = line.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            if readline is None:
                _append_history(history, line)
            elif not tty:  # input() only records history itself when it edits on a tty
                readline.add_history(line)
            run_command(sessions, " ".join(words), out, err)
    finally:
        for session in sessions:
            session.close()
        if readline is not None:
            try:
                readline.write_history_file(history)
            except OSError:
                pass
    return EX_OK


def _append_history(path: str, line: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError:
        pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="gearman-driver-console",
        description="Talk to gearman-driver's management console.",
        epilog="Without a command: interactive prompt. Commands: " + ", ".join(COMMANDS),
    )
    p.add_argument(
        "--server",
        action="append",
        help=f'"host[:port] host2[:port]" (default {DEFAULT_SERVER}); several: output prefixed',
    )
    p.add_argument("--socket", action="append", metavar="PATH", type=socket_path,
                   help="console's unix socket")
    p.add_argument("--timeout", type=timeout_seconds, default=TIMEOUT,
                   help="connect/read timeout, seconds")
    p.add_argument("command", nargs="*", help="one command to send, e.g. status")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gearman-driver-console``."""
    parser = _parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return EX_OK if exc.code in (0, None) else EX_USAGE
        targets = [Target(path, path=path) for path in args.socket or []]
        specs = " ".join(args.server or []).replace(",", " ").split()
        if not specs and not targets:
            specs = [DEFAULT_SERVER]
        targets += [parse_console_address(spec) for spec in specs]
        if any("\n" in w or "\r" in w for w in args.command):
            raise UsageError("a command must be one line")
    except UsageError as exc:
        print(f"gearman-driver-console: {exc}", file=sys.stderr)  # first, as the daemon
        parser.print_usage(sys.stderr)
        return EX_USAGE
    sessions = [Session(t, args.timeout) for t in targets]
    if not args.command:
        return interactive(sessions, sys.stdout, sys.stderr)
    try:
        return run_command(sessions, " ".join(args.command), sys.stdout, sys.stderr)
    finally:
        for session in sessions:
            session.close()


if __name__ == "__main__":
    sys.exit(main())
