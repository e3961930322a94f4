"""`gearman-driver reload`: ask a running master to reload and wait for the outcome.

SIGHUP cannot tell its sender whether the new configuration was taken; this command asks
through the management console (`reload`), whose reply comes only once that reload has been
applied or refused. It is the unit's ExecReload=, so `systemctl reload` fails when the new
configuration is refused, and it works the same without systemd.

Exit statuses: 0 reloaded; 1 refused (the reason on stderr; the previous configuration keeps
running); 2 no console could be reached; 64 bad command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gearman_driver.console.client import (
    DEFAULT_SERVER,
    EX_UNREACHABLE,
    EX_USAGE,
    Session,
    Target,
    Unreachable,
    UsageError,
    parse_console_address,
    socket_path,
    timeout_seconds,
)

EX_REFUSED = 1
TIMEOUT = 90.0  # systemd's default TimeoutSec for ExecReload=
PROG = "gearman-driver reload"
REFUSED = "ERR reload_failed: "


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Reload a running gearman-driver and wait for "
                     "the outcome.", epilog="Exit status: 0 reloaded, 1 refused, "
                     "2 unreachable, 64 bad command line.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", type=socket_path,
                       help="the master's console_socket")
    where.add_argument("--server", metavar="HOST[:PORT]",
                       help=f"the master's TCP console (default {DEFAULT_SERVER})")
    parser.add_argument("--timeout", type=timeout_seconds, default=TIMEOUT,
                        help=f"seconds to wait for the outcome (default {TIMEOUT:.0f})")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    try:
        try:
            args = parser.parse_args(list(argv))
        except SystemExit as exc:  # --help
            return 0 if exc.code in (0, None) else EX_USAGE
        target = Target(args.socket, path=args.socket) if args.socket is not None else \
            parse_console_address(args.server or DEFAULT_SERVER)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)  # the message first, as the daemon's
        parser.print_usage(sys.stderr)
        return EX_USAGE
    session = Session(target, args.timeout)
    try:
        reply = session.request("reload")
    except Unreachable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_UNREACHABLE
    finally:
        session.close()
    if reply == ["OK"]:
        return 0
    text = " ".join(reply)
    if text.startswith(REFUSED):
        text = f"reload failed: {text.removeprefix(REFUSED)}; running on the previous " \
               "configuration"
    print(f"gearman-driver: {text}", file=sys.stderr)
    return EX_REFUSED
