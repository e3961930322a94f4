"""What each step of a worker process's start costs in private pages, step by step.

    python -m bench.child_phases --configfile X   # the daemon, children stop at GD_STOP_AT

Run as the daemon's entry point, this wraps a few functions of gearman_driver.child.process and the
native backend so that every child stops itself (SIGSTOP) at the step named by the
environment variable GD_STOP_AT. `measure()` starts the daemon once per step and reads the
stopped children's USS from outside: the growth from one step to the next is what that step
wrote (a stopped process writes nothing more, and its siblings share what the master changes
after the forks). The wrappers only observe; they change nothing the child does.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS = (
    ("fork", "right after fork: CPython's after-fork work and handlers (threading, logging, "
             "random), nothing of ours"),
    ("entry", "the fork's return into our code, run_child entered"),
    ("closed", "the master's sockets and pipes closed"),
    ("before _set_title", "signal handlers, parent-death signal, gc, log context"),
    ("after _set_title", "process title (setproctitle)"),
    ("backend run", "runners and the backend object built"),
    ("registered", "connected and registered with gearmand"),
    ("idle", "idle for a second"),
)


def _stop_at(step: str) -> None:
    if step == os.environ.get("GD_STOP_AT"):
        os.kill(os.getpid(), signal.SIGSTOP)


def _install() -> None:
    import dataclasses

    import gearman_driver.child.backends.native as native
    import gearman_driver.child.process as child
    import gearman_driver.master.processes as processes

    run_child = processes.run_child
    starting = [False]  # only the master's forks of workers stop, not its config reader's
    os.register_at_fork(after_in_child=lambda: _stop_at("fork") if starting[0] else None)
    start_batch = processes.ProcessManager.start_batch

    def traced_start_batch(self: Any, requests: Any) -> Any:
        starting[0] = True
        try:
            return start_batch(self, requests)
        finally:
            starting[0] = False

    processes.ProcessManager.start_batch = traced_start_batch  # type: ignore[method-assign]

    def traced_run_child(spec: Any, **kwargs: Any) -> Any:
        _stop_at("entry")
        close = kwargs["close_inherited"]

        def traced_close() -> None:
            close()
            _stop_at("closed")
        kwargs["close_inherited"] = traced_close
        return run_child(spec, **kwargs)

    processes.run_child = traced_run_child
    set_title = child._set_title

    def traced_set_title(spec: Any) -> None:
        _stop_at("before _set_title")
        set_title(spec)
        _stop_at("after _set_title")

    child._set_title = traced_set_title
    backend_run: Callable[[Any], None] = native.NativeBackend.run

    def traced_run(self: Any) -> None:
        _stop_at("backend run")
        registered = self.hooks.on_registered

        def on_registered(server: Any) -> None:
            registered(server)
            _stop_at("registered")
        self.hooks = dataclasses.replace(self.hooks, on_registered=on_registered)
        backend_run(self)

    native.NativeBackend.run = traced_run  # type: ignore[method-assign]


def measure(tmp: Path, port: int, procs: int = 8) -> list[tuple[str, str, float]]:
    """(step, what it does, median USS in MB of `procs` children stopped after it)."""
    from bench.common import PYTHON, ROOT, kill_pids, uss_mb
    from bench.daemon import Daemon
    from tests.gearmand_util import wait_for

    out = []
    for step, what in STEPS:
        daemon = Daemon(tmp / "phases", port, "bw_echo", name="phases",
                        jobs={"bench.echo": (procs, procs)}, env={"GD_STOP_AT": step})
        with open(daemon.log_path, "ab") as log:
            daemon.proc = subprocess.Popen(
                [PYTHON, "-m", "bench.child_phases", "--configfile", str(daemon.config_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), env=daemon.env)
        try:
            wait_for(lambda d=daemon, s=step: _settled(d, s, procs), 30, 0.05)
            time.sleep(1.0)
            kids = daemon.children()
            uss = [uss_mb(k) for k in kids]
            out.append((step, what, statistics.median(uss)))
        finally:  # the master first, so it replaces none of the children killed next
            kids = daemon.children()
            if daemon.alive():
                daemon.signal(signal.SIGTERM)
            kill_pids(kids)
            daemon.stop(10)
    return out


def _settled(daemon: Any, step: str, procs: int) -> bool:
    from bench.common import stopped  # not at the top: this module is the daemon's entry

    kids = daemon.children()
    return len(kids) == procs and (step == "idle" or all(map(stopped, kids)))


if __name__ == "__main__":
    _install()
    from gearman_driver.cli import main

    sys.exit(main(sys.argv[1:]))
