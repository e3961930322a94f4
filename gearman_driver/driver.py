"""The master: one thread, one loop — handle signals, reap, observe, decide, start and stop.

Modelled on gunicorn's arbiter: signals reach the loop through a self-pipe (`set_wakeup_fd`),
every socket is non-blocking and dispatched by one selector, and every decision reads the job
table and the scoreboard. A crash in user code never reaches this loop: user code runs in
children, and user callbacks here are guarded.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gearman_driver import __version__
from gearman_driver.config import Settings, load_settings, options_for
from gearman_driver.jobs import Job, JobSpec, JobTable, LoadError, MethodSpec
from gearman_driver.loader import apply_runtime_attributes, load_jobs
from gearman_driver.logs import reopen_logfile
from gearman_driver.observer import Observer, Snapshot
from gearman_driver.processes import ProcessManager
from gearman_driver.scaling import JobFigures, ProcessFigures, decide
from gearman_driver.scoreboard import Scoreboard, State
from gearman_driver.systemd import Notifier
from gearman_driver.worker import Worker

log = logging.getLogger("gearman_driver")

SCOREBOARD_SLOTS = 4096
TURN_SECONDS = 0.2
SATURATION_POLL_GAP = 0.05
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD,
                   signal.SIGUSR1, signal.SIGUSR2)

UnknownJobCallback = Callable[["Driver", dict[str, Any]], None]


class Driver:
    """Runs the jobs of the configured namespaces (and any added with `add_job`)."""

    def __init__(self, settings: Settings | None = None, *,
                 unknown_job_callback: UnknownJobCallback | None = None, **options: Any) -> None:
        self.settings = settings if settings is not None else load_settings([], options)
        self.cli_overrides: Mapping[str, Any] = dict(options)  # re-applied on every reload
        self.jobs = JobTable()
        self.unknown_job_callback = unknown_job_callback
        self._loaded = False
        self._stopping = False
        self._reload_requested = False
        self._warned_unknown: set[str] = set()
        self._last_snapshot_used: dict[str, float] = {}
        self._next_poll = 0.0
        self._last_saturation_poll = 0.0
        self._last_gc = time.monotonic()
        self.selector: selectors.BaseSelector | None = None
        self.observer: Observer | None = None
        self.console: Any = None
        self.scoreboard: Scoreboard | None = None
        self.processes: ProcessManager | None = None
        self.notifier = Notifier()
        self._wakeup: tuple[int, int] | None = None
        self.driver_id = f"{socket.gethostname().replace(' ', '_')}:{os.getpid()}"

    # -- Gearman::Driver's public API --------------------------------------------------------
    def add_job(self, name: str, worker: Worker, methods: Sequence[Mapping[str, Any]],
                min_processes: int = 1, max_processes: int = 1) -> None:
        """Register a job without decorators: methods are {"name", "body", "encode", "decode"}."""
        specs = []
        for method in methods:
            body = method["body"]
            bound = body if getattr(body, "__self__", None) is not None else \
                body.__get__(worker, type(worker))
            specs.append(MethodSpec(
                function=str(method["name"]), body=bound,
                encode=_resolve_coder(worker, method.get("encode"), "encode"),
                decode=_resolve_coder(worker, method.get("decode"), "decode"),
            ))
        if min_processes > max_processes:
            raise LoadError(f"add_job({name}): min_processes ({min_processes}) is greater than "
                            f"max_processes ({max_processes})")
        self.jobs.add(JobSpec(name, worker, f"{type(worker).__module__}."
                              f"{type(worker).__qualname__}", tuple(specs), min_processes,
                              max_processes))

    def get_jobs(self) -> list[Job]:
        return [self.jobs[name] for name in self.jobs]

    def get_job(self, name: str) -> Job:
        return self.jobs[name]

    def has_job(self, name: str) -> bool:
        return name in self.jobs

    def shutdown(self) -> None:
        """Graceful: children finish the job in hand, then the master returns from run()."""
        if not self._stopping:
            log.info("shutting down: stopping %d processes",
                     sum(len(j.processes) for j in self.jobs.values()))
            self.notifier.stopping()
        self._stopping = True
        if self.processes:
            for process in list(self.jobs.processes()):
                self.processes.stop(process, "shutdown")

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        """Import the namespaces and build the job table (the master's copy-on-write heap)."""
        if self._loaded:
            return
        gc.disable()
        settings = self.settings
        specs = load_jobs(settings.namespaces, settings.lib, settings.server_string,
                          lambda path: options_for(settings, path))
        specs = apply_runtime_attributes(specs, settings.job_runtime_attributes, settings.error)
        for spec in specs:
            self.jobs.add(spec)
        if self.unknown_job_callback is None and settings.unknown_job_callback:
            self.unknown_job_callback = _import_callback(settings)  # `lib` is on sys.path now
        self._loaded = True

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        """Start every job's processes and keep them within their limits until shut down."""
        self.load()
        self._open()
        log.info("gearman-driver %s started (pid %d): %d jobs, servers %s, config %s",
                 __version__, os.getpid(), len(self.jobs), self.settings.server_string,
                 ", ".join(self.settings.config_files) or "none")
        try:
            while True:
                self._turn()
                if self._stopping and not any(j.processes for j in self.jobs.values()):
                    break
        finally:
            self._close()
        log.info("gearman-driver stopped")
        return 0

    def _turn(self) -> None:
        assert self.selector is not None and self.processes is not None
        for key, mask in self.selector.select(TURN_SECONDS):
            key.data(mask)
        now = time.monotonic()
        self.processes.reap(now)
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        if not self._stopping:
            self._manage(now)
        self.processes.enforce_deadlines(now)
        if self.observer is not None:
            self.observer.tick(now)
            if not self._stopping and self.settings.interval > 0 and now >= self._next_poll:
                if self.observer.start_poll(now):
                    self._next_poll = now + self.settings.interval
        if self.console is not None:
            self.console.tick(now)
        self.notifier.tick(now, self.status_line)
        if now - self._last_gc > 60:
            gc.collect()  # frozen objects are skipped: only the master's own garbage
            self._last_gc = now

    def _manage(self, now: float) -> None:
        """Bring every job within its limits, and scale it from a fresh snapshot once."""
        assert self.processes is not None and self.scoreboard is not None
        snapshot = self.observer.snapshot if self.observer is not None else None
        saturated = False
        for job in self.jobs.values():
            waiting: int | None = None
            drivers = 1
            if snapshot is not None and snapshot.servers_up and \
                    self._last_snapshot_used.get(job.name) != snapshot.taken_at:
                self._last_snapshot_used[job.name] = snapshot.taken_at
                waiting = snapshot.waiting(job.spec.functions)
                drivers = self._drivers(snapshot, job)
            figures = self._figures(job, waiting, drivers, now)
            decision = decide(figures)
            if decision.start and self.processes.can_start(job, now):
                reason = "scale up" if waiting else "min_processes"
                gc.freeze()
                for _ in range(decision.start):
                    self.processes.start(job, reason)
            for pid in decision.stop:
                process = job.processes.get(pid)
                if process is not None:
                    self.processes.stop(process, "idle" if waiting == 0 else "max_processes")
            live = [p for p in figures.processes if not p.stopping]
            if live and all(p.busy for p in live) and len(live) < job.max_processes:
                saturated = True
        if saturated and self.observer is not None and self.settings.interval > 0 and \
                now - self._last_saturation_poll >= SATURATION_POLL_GAP:
            if self.observer.start_poll(now):
                self._last_saturation_poll = now

    def _figures(self, job: Job, waiting: int | None, drivers: int, now: float) -> JobFigures:
        assert self.scoreboard is not None
        wall = time.time()
        processes = []
        for process in job.processes.values():
            view = self.scoreboard.read(process.slot)
            since = view.last_job_end if view.last_job_end else view.started
            processes.append(ProcessFigures(process.pid, view.state == State.BUSY,
                                            max(0.0, wall - since), process.stopping))
        return JobFigures(job.name, job.min_processes, job.max_processes, processes, waiting,
                          drivers, self.settings.max_idle_time)

    def _drivers(self, snapshot: Snapshot, job: Job) -> int:
        from gearman_driver.observer import driver_peers

        return len(driver_peers(snapshot, job.spec.functions) | {self.driver_id})

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        ours = {f for job in self.jobs.values() for f in job.spec.functions}
        for name, status in snapshot.functions.items():
            if name in ours or status.total <= 0:
                continue
            info = {"name": name, "queue": status.total, "busy": status.running,
                    "free": max(0, status.available_workers - status.running),
                    "running": status.available_workers}
            if self.unknown_job_callback is not None:
                try:
                    self.unknown_job_callback(self, info)
                except Exception:
                    log.exception("unknown_job_callback failed for %s", name)
            elif name not in self._warned_unknown:
                self._warned_unknown.add(name)
                log.warning("gearmand has %d jobs queued for %s, which no job of ours serves",
                            status.total, name)

    # -- set-up and tear-down ------------------------------------------------------------------
    def _open(self) -> None:
        self.selector = selectors.DefaultSelector()
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._wakeup = (read_fd, write_fd)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _noop_handler)
        self.selector.register(read_fd, selectors.EVENT_READ, self._on_signal_pipe)
        self.scoreboard = Scoreboard(SCOREBOARD_SLOTS)
        self.processes = ProcessManager(
            self.jobs, self.scoreboard,
            servers=lambda: list(self.settings.server),
            backend=lambda job: job.spec.worker_backend or self.settings.worker_backend,
            graceful_timeout=lambda: float(self.settings.graceful_timeout),
            max_jobs=lambda job: (job.spec.max_jobs_per_process
                                  if job.spec.max_jobs_per_process is not None
                                  else self.settings.max_jobs_per_process,
                                  self.settings.max_jobs_jitter),
            close_inherited=self._close_in_child,
        )
        if self.settings.interval > 0:
            self.observer = Observer(self.settings.server, self.selector,
                                     timeout=max(1.0, min(5.0, self.settings.interval * 2)),
                                     on_snapshot=self._on_snapshot)
        self._open_console()

    def _open_console(self) -> None:
        if not self.settings.console_port and not self.settings.console_socket:
            return
        try:
            from gearman_driver.console import ConsoleServer
        except ImportError:  # pragma: no cover - console module not installed
            return
        from gearman_driver.control import DriverControl

        assert self.selector is not None
        self.console = ConsoleServer(
            DriverControl(self), self.selector, host=self.settings.console_host,
            port=self.settings.console_port or None,
            socket_path=self.settings.console_socket,
        )
        self.console.open()

    def _close_in_child(self) -> None:
        """Right after fork: drop the master's sockets, pipe and signal set-up."""
        signal.set_wakeup_fd(-1)
        if self._wakeup:
            for fd in self._wakeup:
                os.close(fd)
        if self.observer is not None:
            self.observer.close_in_child()
        if self.console is not None:
            self.console.close_in_child()
        if self.selector is not None:
            try:
                self.selector.close()
            except OSError:
                pass

    def _close(self) -> None:
        if self.processes is not None:
            for process in list(self.jobs.processes()):
                self.processes.kill(process, "master exiting")
            deadline = time.monotonic() + 5
            while any(j.processes for j in self.jobs.values()) and time.monotonic() < deadline:
                self.processes.reap(time.monotonic())
                time.sleep(0.01)
        if self.console is not None:
            self.console.close()
        if self.observer is not None:
            self.observer.close()
        signal.set_wakeup_fd(-1)
        if self._wakeup:
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None
        if self.selector is not None:
            self.selector.close()

    def _on_signal_pipe(self, mask: int) -> None:
        assert self._wakeup is not None
        try:
            data = os.read(self._wakeup[0], 4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                if not self._stopping:
                    log.info("received %s", signal.Signals(signum).name)
                self.shutdown()
            elif signum == signal.SIGHUP:
                self._reload_requested = True
            elif signum == signal.SIGUSR1:
                reopen_logfile()
                log.info("log file reopened")

    def reload(self) -> None:
        """SIGHUP: re-read the config files; keep the old configuration if they are invalid."""
        from gearman_driver.reload import apply_reload

        apply_reload(self)

    def limits_changed(self, name: str) -> None:
        """Console or reload changed a job's limits; every turn applies limits, so log only."""
        job = self.jobs[name]
        log.info("limits of %s set to min %d, max %d", name, job.min_processes,
                 job.max_processes)

    # -- what the console, STATUS and tests read ----------------------------------------------
    def registered_pids(self, name: str) -> list[int]:
        """Processes of a job whose functions gearmand has confirmed registered."""
        assert self.scoreboard is not None
        return [p.pid for p in self.jobs[name].processes.values()
                if self.scoreboard.read(p.slot).registered > 0]

    def status_line(self) -> str:
        assert self.scoreboard is not None
        processes = list(self.jobs.processes())
        busy = sum(1 for p in processes if self.scoreboard.read(p.slot).busy)
        text = f"{len(processes)} processes ({busy} busy) in {len(self.jobs)} jobs"
        if self.observer is not None and self.observer.snapshot is not None:
            snap = self.observer.snapshot
            total = len(snap.servers_up) + len(snap.servers_down)
            text += f"; gearmand {len(snap.servers_up)}/{total} up"
            if snap.servers_down:
                text += " (down: " + ", ".join(f"{h}:{p}" for h, p in snap.servers_down) + ")"
        return text


def _import_callback(settings: Settings) -> UnknownJobCallback:
    """Resolve `unknown_job_callback: "module:function"`; a bad one is a config error."""
    spec = settings.unknown_job_callback or ""
    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        raise settings.error(("unknown_job_callback",),
                             f"expected an importable 'module:function', got {spec!r} ({exc})"
                             ) from exc
    if not callable(function):
        raise settings.error(("unknown_job_callback",), f"{spec} is not callable")
    return function  # type: ignore[no-any-return]


def _noop_handler(signum: int, frame: object) -> None:
    """The wakeup fd carries the signal; the loop handles it."""


def _resolve_coder(worker: Worker, value: Any, default: str) -> Callable[[Any], Any] | None:
    if value in (None, False):
        return None
    if callable(value):
        return value
    method = getattr(worker, default if value is True else str(value), None)
    if not callable(method):
        raise LoadError(f"{type(worker).__name__}: no method {value!r} to {default} with")
    return method
