"""`gearman-driver`: the daemon's command line.

Exit statuses: 0 after a clean shutdown or a good `--check-config`; 64 (EX_USAGE) for a bad
command line; 78 (EX_CONFIG) for a config or worker-loading mistake, reported in one line;
75 (EX_TEMPFAIL) when the pid file is held by another running instance; 73 (EX_CANTCREAT) when
the pid file or the console's socket or port cannot be created (see :mod:`gearman_driver.paths`).
`gearman-driver reload [--socket PATH | --server HOST:PORT]` asks a running master to reload
(see reload_client).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from gearman_driver import gcpolicy

EX_TEMPFAIL = 75


def _print_error(message: str) -> None:
    print(f"gearman-driver: {message}", file=sys.stderr)


def job_table(driver: Any) -> str:
    """The `--check-config` table: job, functions, min, max, worker class."""
    rows = [("JOB", "FUNCTIONS", "MIN", "MAX", "CLASS")]
    for job in driver.get_jobs():
        rows.append((job.name, ",".join(job.spec.functions), str(job.min_processes),
                     str(job.max_processes), job.spec.class_path))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                 row[3].rjust(widths[3]), row[4]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the loop runs (it handles SIGINT itself)
        return 128 + signal.SIGINT


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["reload"]:
        from gearman_driver.console.reload_client import main as reload_main

        return reload_main(args[1:])
    from gearman_driver.master import early_signals

    early_signals.defer()  # a reload or log reopen while starting waits for the loop
    gcpolicy.off_while_loading()  # before any worker code is imported
    from gearman_driver.config.cmdline import parse_args
    from gearman_driver.config.reader import read_settings
    from gearman_driver.config.settings import EX_CONFIG, ConfigError
    from gearman_driver.jobs.table import LoadError
    from gearman_driver.logs import install, open_configured, setup_logging
    from gearman_driver.master.driver import Driver
    from gearman_driver.master.pidfile import PidFile, PidFileLocked
    from gearman_driver.master.reexec import take_handover
    from gearman_driver.paths import EX_CANTCREAT, CannotCreate

    command = parse_args(args)
    handover = take_handover()  # a re-exec: start from what the master before accepted
    try:
        settings = handover.settings if handover else \
            read_settings(command.config_files, command.overrides)
        install(open_configured(settings), settings.loglevel)
        driver = Driver(settings)
        driver.cli_overrides = command.overrides
        driver.reexec_allowed = True
        driver.load()
    except (ConfigError, LoadError) as exc:
        _print_error(str(exc))
        if handover:
            handover.refuse(str(exc))
        return EX_CONFIG
    driver.handover = handover
    if command.check_config:
        print(job_table(driver))
        return 0

    pidfile = PidFile(settings.pidfile) if settings.pidfile else None
    try:
        if pidfile:
            pidfile.acquire(write=not settings.daemonize)
    except PidFileLocked as exc:
        _print_error(str(exc))
        return EX_TEMPFAIL
    except CannotCreate as exc:
        _print_error(str(exc))
        return EX_CANTCREAT
    driver.pidfile = pidfile  # a reload may move it: the driver holds it from now on
    try:
        if settings.daemonize:
            _daemonize(pidfile)
            setup_logging(settings.loglevel, settings.logfile, settings.loglayout)
        return driver.run()
    except CannotCreate as exc:  # the console's socket or port, before any process is forked
        _print_error(str(exc))
        return EX_CANTCREAT
    finally:
        if driver.pidfile:
            driver.pidfile.release()


def _daemonize(pidfile: Any) -> None:
    """Detach with python-daemon, keeping every file the worker code already opened."""
    import daemon

    keep = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            keep.append(fd)
    context = daemon.DaemonContext(files_preserve=keep, working_directory=os.getcwd(),
                                   umask=0o022, detach_process=True)
    context.open()
    if pidfile:
        pidfile.write()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
