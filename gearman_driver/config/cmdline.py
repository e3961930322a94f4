"""The ``gearman-driver`` command line, compatible with Perl's ``gearman_driver.pl``.

Every option may be written with underscores (as in Perl: ``--console_port``) or dashes
(``--console-port``). Options override the config files; a repeated ``--namespaces`` or
``--lib`` replaces the files' list.

This module only parses: values stay as typed except that numbers become ``int``/``float``.
A value that is not a number is kept as given, so that ``load_settings`` reports it with the
rest of the configuration as ``command line: --interval: expected a number >= 0, got 'x'``.

Exit statuses (sysexits.h):
    0   ok (also after ``--help`` and ``--version``)
    64  EX_USAGE: unknown option or missing argument; one message line, then the usage line
    78  EX_CONFIG: a configuration mistake (raised as ``ConfigError`` by ``config``)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from gearman_driver.config.merging import coerce_override
from gearman_driver.config.reading import EX_CONFIG, single_line
from gearman_driver.version import __version__

__all__ = ["EX_CONFIG", "EX_USAGE", "CommandLine", "build_parser", "parse_args"]

#: sysexits.h EX_USAGE: the command line itself is wrong.
EX_USAGE = 64

PROG = "gearman-driver"

# (setting, metavar, help); each becomes --setting and --setting-with-dashes.
_VALUE_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("server", "HOST[:PORT][,...]", "gearmand servers (default: localhost:4730)"),
    ("console_port", "PORT", "management console port, 0 disables it (default: 47300)"),
    ("console_host", "ADDRESS", "management console address (default: 127.0.0.1)"),
    ("console_socket", "PATH", "management console Unix socket"),
    ("metrics_port", "PORT", "Prometheus metrics port (GET /metrics), 0 disables it (default: 0)"),
    ("metrics_host", "ADDRESS", "Prometheus metrics address (default: 127.0.0.1)"),
    ("interval", "SECONDS", "seconds between looks at gearmand's queues, 0: no scaling"),
    ("max_idle_time", "SECONDS", "seconds a surplus idle process may live (default: 0)"),
    ("graceful_timeout", "SECONDS", "seconds to finish a job before SIGKILL (default: 30)"),
    ("keepalive", "SECONDS", "probe gearmand connections after this much silence, 0: off "
                             "(default: 60)"),
    ("logfile", "PATH", "log file (default: stderr)"),
    ("loglevel", "LEVEL", "DEBUG, INFO, WARNING, ERROR or CRITICAL (default: INFO)"),
    ("loglayout", "LAYOUT", "log layout (default: '[%%d] %%p %%m%%n')"),
    ("pidfile", "PATH", "write the master's process id here"),
    ("worker_backend", "NAME", "native or pygearman (default: native)"),
)

# Repeatable: each occurrence adds one item; together they replace the files' list.
_LIST_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("namespaces", "PACKAGE", "Python package holding worker modules (repeatable)"),
    ("lib", "DIR", "directory to put on sys.path before importing (repeatable)"),
    ("console_allow_users", "USER", "user name or uid who may also change things over the "
                                    "console, '*' for anyone (repeatable; see README)"),
)


@dataclass
class CommandLine:
    """What the user asked for: files to read, settings to override, and whether only to check."""

    config_files: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)  # only the options given
    check_config: bool = False


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake exits 64 with one message line and the usage line."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {single_line(message)}\n")
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE)


def _spellings(name: str) -> list[str]:
    """``--console_port`` (Perl) and ``--console-port``; one spelling if there is no underscore."""
    dashed = name.replace("_", "-")
    return [f"--{name}"] if dashed == name else [f"--{name}", f"--{dashed}"]


def build_parser() -> argparse.ArgumentParser:
    """The parser; exposed so ``--help`` output and man pages can be generated from it."""
    parser = _Parser(
        prog=PROG,
        usage="%(prog)s [--configfile FILE]... [--check-config] [options]",
        description="Runs and scales Gearman worker processes from one YAML config.",
        epilog="Exit status: 0 ok, 64 bad command line, 73 pid file or console cannot be "
               "created, 75 pid file held by another instance, 78 configuration mistake.",
    )
    parser.add_argument(
        "--configfile",
        dest="configfile",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config file (repeatable; later files override earlier ones)",
    )
    parser.add_argument(
        *_spellings("check_config"),
        dest="check_config",
        action="store_true",
        help="validate the config, load the workers, print the job table and exit",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for name, metavar, text in _LIST_OPTIONS:
        parser.add_argument(
            *_spellings(name),
            dest=name,
            action="append",
            default=argparse.SUPPRESS,
            metavar=metavar,
            help=text,
        )
    for name, metavar, text in _VALUE_OPTIONS:
        parser.add_argument(
            *_spellings(name), dest=name, default=argparse.SUPPRESS, metavar=metavar, help=text
        )
    parser.add_argument(
        "--daemonize",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
        help="detach and run in the background (leave off under systemd)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> CommandLine:
    """Parse ``argv`` (without the program name); exits 64 on a usage mistake."""
    namespace = vars(build_parser().parse_args(list(argv)))
    config_files = list(namespace.pop("configfile"))
    check_config = bool(namespace.pop("check_config"))
    overrides = {key: coerce_override(key, value) for key, value in namespace.items()}
    return CommandLine(config_files=config_files, overrides=overrides, check_config=check_config)
