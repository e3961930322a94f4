"""What runs inside a forked worker process: set-up, signals, the backend around the runners.

The child never returns into the master's code: it ends with `os._exit`, so no atexit hook,
buffered file or finaliser inherited from the master runs twice.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import select
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import setproctitle  # imported by the master: not once more in every child

from gearman_driver import gcpolicy
from gearman_driver.child.backends import (
    BackendHooks,
    GearmanJob,
    backend_class,
)
from gearman_driver.child.recycle import Recycler
from gearman_driver.child.runner import make_runner
from gearman_driver.jobs.table import USER_CODE_ERRORS, JobSpec
from gearman_driver.keepalive import DEFAULT_KEEPALIVE
from gearman_driver.logs import LEVEL_SIGNAL, follow_level, set_process_context
from gearman_driver.protocol import DEFAULT_MAX_PACKET
from gearman_driver.scoreboard import SlotWriter

log = logging.getLogger("gearman_driver.child")
# setproctitle moves the environment out of the way of the title on its first use: done once
# here, in the master, rather than in every child (it copies every variable to the heap).
setproctitle.getproctitle()

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
#: The C functions under the `signal` module's wrappers, for a child's set-up. The wrappers turn
#: what they return (the previous handler, the old mask) into enum members; for a Python handler
#: (the master's) that lookup raises and catches ValueError inside enum's machinery, and in a
#: fresh child every object it touches is a page copied: about 0.14 MB per child, measured.
_C_SIGNAL: Any = importlib.import_module("_signal")
#: PR_SET_PDEATHSIG's signal: the master died. Not SIGTERM, which a job may ignore or block.
ORPHAN_SIGNAL = signal.SIGRTMIN
PR_SET_PDEATHSIG = 1


def host_label() -> str:
    """This host as it appears in client ids (no white space: gearmand splits on it)."""
    return socket.gethostname().replace(" ", "_")


def client_id(master_pid: int, job_name: str, pid: int | None = None) -> str:
    """`<host>:<pid>:<master pid>:<job name>`: gearmand's `workers` then names us and our driver."""
    return f"{host_label()}:{pid or os.getpid()}:{master_pid}:{job_name.replace(' ', '_')}"


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once, in the master: a child that built its own CDLL would copy heap pages.
_PRCTL = _load_prctl()


def set_parent_death_signal(master_pid: int, signum: int) -> None:
    """Get `signum` when the master dies, even by SIGKILL; exit now if it already has."""
    if _PRCTL is not None:  # not Linux: the orphan check below still applies
        _PRCTL(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != master_pid:
        os._exit(0)


def kill_me_later(seconds: float) -> None:
    """SIGKILL this process `seconds` from now unless it exits first, whatever it then does
    with its signals: a forked guard waits on a pidfd of ours (no pid reuse race) and exits.

    A thread would do it without a fork, but would cost every worker a second task (pids
    cgroups and RLIMIT_NPROC count threads) and a malloc arena; this runs only once the
    master is gone. The guard's copy of our gearmand sockets is closed by the fork hook."""
    pidfd = os.pidfd_open(os.getpid())
    try:
        if os.fork() == 0:
            try:
                signal.set_wakeup_fd(-1)
                for signum in (*STOP_SIGNALS, ORPHAN_SIGNAL):
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                ready, _, _ = select.select([pidfd], [], [], seconds)
                if not ready:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os._exit(0)
    finally:
        os.close(pidfd)


def run_child(
    spec: JobSpec,
    *,
    servers: Sequence[tuple[str, int]],
    master_pid: int,
    writer: SlotWriter,
    backend_name: str,
    graceful_timeout: float,
    max_jobs: int,
    close_inherited: Callable[[], None],
    max_rss_mb: float = 0.0,
    max_workload: int = DEFAULT_MAX_PACKET,
    keepalive: float = DEFAULT_KEEPALIVE,
) -> NoReturn:
    """Become a worker process for `spec`; never returns."""
    code = 0
    try:
        close_inherited()
        stop = [False, False]  # stop taking jobs; orphaned (the master is gone)

        def request_stop(signum: int, frame: object) -> None:
            stop[0] = True

        wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            _C_SIGNAL.signal(signum, request_stop)
        _C_SIGNAL.signal(LEVEL_SIGNAL, follow_level)  # the master changed the log level
        _C_SIGNAL.signal(signal.SIGUSR2, _C_SIGNAL.SIG_IGN)
        _C_SIGNAL.signal(signal.SIGCHLD, _C_SIGNAL.SIG_DFL)
        def orphaned(signum: int, frame: object) -> None:
            if stop[1]:
                return
            stop[0] = stop[1] = True  # take no new job; the one in hand may finish
            log.warning("the master (pid %d) is gone: taking no new job, exiting within %gs",
                        master_pid, graceful_timeout)
            kill_me_later(graceful_timeout)

        _C_SIGNAL.signal(ORPHAN_SIGNAL, orphaned)
        set_parent_death_signal(master_pid, ORPHAN_SIGNAL)
        _C_SIGNAL.pthread_sigmask(signal.SIG_SETMASK, ())

        pid = os.getpid()
        gcpolicy.in_child()
        set_process_context(f"{spec.name}[{pid}]", job=spec.name)
        _set_title(spec)
        writer.ready(pid)

        recycler = Recycler(max_jobs, max_rss_mb)

        def recycle(job: GearmanJob) -> None:
            why = recycler.after_job()
            if why is not None:
                log.info("recycling after job %s (handle %s), process %d: %s", job.function,
                         job.handle.decode("ascii", "replace"), pid, why)
                stop[0] = True

        after_job = recycle if recycler.active else None

        registered: set[tuple[str, int]] = set()
        ever_registered: set[tuple[str, int]] = set()
        server_index = {server: index for index, server in enumerate(servers)}

        def on_registered(server: tuple[str, int]) -> None:
            if server in ever_registered:  # connected again after losing it: counted
                writer.reconnected(server_index[server])
            ever_registered.add(server)
            registered.add(server)
            writer.set_registered(len(registered))

        def on_disconnected(server: tuple[str, int]) -> None:
            registered.discard(server)
            writer.set_registered(len(registered))

        hooks = BackendHooks(should_stop=lambda: stop[0], on_registered=on_registered,
                             on_disconnected=on_disconnected, wakeup_fd=wakeup_read,
                             on_result_sent=writer.result_sent)
        backend: Any
        if spec.slotted:  # several jobs at once, or async methods: the slots backend
            from gearman_driver.child.backends.slots import SlotsBackend  # the master's import
            from gearman_driver.child.slot_runner import SlotCall

            calls = {m.function: SlotCall(spec, m, index) for index, m in enumerate(spec.methods)}
            backend = SlotsBackend(servers, client_id(master_pid, spec.name, pid), calls, hooks,
                                   concurrency=spec.concurrency, board=writer,
                                   after_job=after_job, max_workload=max_workload,
                                   keepalive=keepalive)
        else:
            runners = {m.function: make_runner(spec, m, writer, after_job, index)
                       for index, m in enumerate(spec.methods)}
            backend = backend_class(backend_name)(
                servers, client_id(master_pid, spec.name, pid), runners, hooks,
                max_workload=max_workload, keepalive=keepalive,
            )
        # a process a job forks must not keep our gearmand connections open after we exit
        os.register_at_fork(after_in_child=backend.forget_connections)

        backend.run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker process of %s crashed", spec.name)
        code = 70  # EX_SOFTWARE
    finally:
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _set_title(spec: JobSpec) -> None:
    orig = f"gearman-driver: {spec.name}"
    title = None
    try:
        title = spec.worker.process_name(setproctitle.getproctitle(), spec.name)
    except USER_CODE_ERRORS:
        log.exception("process_name() of %s failed", spec.class_path)
    setproctitle.setproctitle(title or orig)
