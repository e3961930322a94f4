"""The master: one thread, one loop — handle signals, reap, observe, decide, start and stop.

Modelled on gunicorn's arbiter: signals reach the loop through a self-pipe (`set_wakeup_fd`),
every socket is non-blocking and dispatched by one selector, and every decision reads the job
table and the scoreboard. A crash in user code never reaches this loop: user code runs in
children, and user callbacks here are guarded.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gearman_driver import gcpolicy
from gearman_driver.api import Worker
from gearman_driver.child.backends import backend_class
from gearman_driver.child.process import host_label
from gearman_driver.config.settings import Settings, load_settings
from gearman_driver.jobs import codestamp
from gearman_driver.jobs.codestamp import CodeStamp
from gearman_driver.jobs.loader import Wanted, added_job_spec, load_configured
from gearman_driver.jobs.options import JobOptions, effective_options
from gearman_driver.jobs.table import Job, JobTable
from gearman_driver.logs import LEVEL_SIGNAL, reopen_logfile
from gearman_driver.master import early_signals
from gearman_driver.master.autoscaler import Autoscaler
from gearman_driver.master.endpoints import Endpoints
from gearman_driver.master.observer import servers_summary
from gearman_driver.master.processes import ProcessManager
from gearman_driver.master.readiness import Readiness
from gearman_driver.master.reexec import Accepted, Handover
from gearman_driver.master.reload_plan import ReloadOutcome
from gearman_driver.master.systemd import Notifier
from gearman_driver.scoreboard import MAX_PROCESSES, Scoreboard
from gearman_driver.version import __version__

if TYPE_CHECKING:
    from gearman_driver.console.control import DriverControl
    from gearman_driver.console.replies import ServerRow
    from gearman_driver.master.looplag import LoopLag
    from gearman_driver.master.metrics import MetricsSource
    from gearman_driver.master.pidfile import PidFile
    from gearman_driver.master.trial import Trial

log = logging.getLogger("gearman_driver")

TURN_SECONDS = 0.2
SHUTTING_DOWN = "gearman-driver is shutting down; the reload was not applied"
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD,
                   signal.SIGUSR1, signal.SIGUSR2)

UnknownJobCallback = Callable[["Driver", dict[str, Any]], None]


class Driver:
    """Runs the jobs of the configured namespaces (and any added with `add_job`)."""

    def __init__(self, settings: Settings | None = None, *,
                 unknown_job_callback: UnknownJobCallback | None = None,
                 wanted: Wanted | str | None = None, **options: Any) -> None:
        if isinstance(wanted, str) and settings is None:  # located as given by the caller
            options["wanted"] = wanted
        self.settings = settings if settings is not None else load_settings([], options)
        self.cli_overrides: Mapping[str, Any] = dict(options)  # re-applied on every reload
        self.jobs = JobTable()
        self.unknown_job_callback = unknown_job_callback
        self.wanted = wanted  # Gearman::Driver's Loader `wanted`; else settings.wanted
        self._loaded = False
        self._stopping = False
        self._reload_requested = False
        self._reload_waiters: list[Callable[[str | None], None]] = []  # of the next reload
        self._current_waiters: list[Callable[[str | None], None]] = []  # of the one running
        self._gc = gcpolicy.MasterCollection(time.monotonic())
        self.selector: selectors.BaseSelector | None = None
        self.autoscaler: Autoscaler | None = None
        self.endpoints: Endpoints | None = None  # the console and the metrics endpoint
        self.reloads = {"ok": 0, "failed": 0}
        self.scoreboard: Scoreboard | None = None
        self.processes: ProcessManager | None = None
        self.notifier = Notifier()
        self._wakeup: tuple[int, int] | None = None
        self.driver_id = ""  # "<host>:<master pid>", set by run(): daemonizing changes the pid
        self.loaded_workers: dict[str, Worker] = {}  # class path -> the object its jobs run on
        self.reexec_allowed = False  # only a master started by the CLI can exec itself again
        self._reexec: Accepted | None = None  # draining to exec a master with these settings
        self.handover: Handover | None = None  # from the master this one replaced (re-exec)
        self._applied_waiters: list[Callable[[str | None], None]] = []  # OK once READY=1
        self.code = CodeStamp()  # the worker code imported at load time, by content
        self.pidfile: PidFile | None = None  # locked by the CLI; a reload may move it
        self._ready_sent = False
        self._readiness = Readiness()
        self.trial: Trial | None = None  # a reload's new worker code, loading in a process
        self.reload_outcome: ReloadOutcome | None = None  # how the last reload ended

    # -- Gearman::Driver's public API --------------------------------------------------------
    def add_job(self, name: str, worker: Worker, methods: Sequence[Mapping[str, Any]],
                min_processes: int = 1, max_processes: int = 1) -> None:
        """Register a job without decorators: methods are {"name", "body", "encode", "decode",
        "exceptions"}."""
        self.jobs.add(added_job_spec(name, worker, methods, min_processes, max_processes))

    def options(self, job: Job) -> JobOptions:
        """The options `job`'s processes start with, under the current settings."""
        return effective_options(job.spec, self.settings)

    def get_jobs(self) -> list[Job]:
        return [self.jobs[name] for name in self.jobs]

    def get_job(self, name: str) -> Job:
        return self.jobs[name]

    def has_job(self, name: str) -> bool:
        return name in self.jobs

    def shutdown(self) -> None:
        """Graceful: children finish the job in hand, then the master returns from run().
        Every reload still asked for, running or draining is answered: not applied."""
        if not self._stopping:
            log.info("shutting down: stopping %d processes",
                     sum(len(j.processes) for j in self.jobs.values()))
            self.notifier.stopping()
        self._stopping = True
        self._reload_requested = False
        waiters = [*self._current_waiters, *self._reload_waiters]
        self._current_waiters, self._reload_waiters = [], []
        for done in waiters:
            done(SHUTTING_DOWN)
        if self.processes:
            for process in list(self.jobs.processes()):
                self.processes.stop(process, "shutdown")

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        """Import the namespaces and build the job table (the master's copy-on-write heap)."""
        if self._loaded:
            return
        early_signals.defer()  # a SIGHUP while importing must not kill the master
        gcpolicy.off_while_loading()
        settings = self.settings
        specs, callback = load_configured(settings, self.wanted)
        for spec in specs:
            self.jobs.add(spec)
            self.loaded_workers[spec.class_path] = spec.worker
        self.code = codestamp.stamp(settings.namespaces, settings.lib)
        if self.unknown_job_callback is None:
            self.unknown_job_callback = callback
        self._loaded = True

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        """Start every job's processes and keep them within their limits until shut down."""
        self.load()
        for name in {self.options(job).backend for job in self.jobs.values()}:
            backend_class(name)  # imported once here, shared by every child, not once per child
        if any(job.spec.slotted for job in self.jobs.values()):  # asyncio, threads: the same
            import gearman_driver.child.backends.slots  # noqa: F401
            import gearman_driver.child.slot_runner  # noqa: F401
        self._open()
        log.info("gearman-driver %s started (pid %d): %d jobs, servers %s, config %s",
                 __version__, os.getpid(), len(self.jobs), self.settings.server_string,
                 ", ".join(self.settings.config_files) or "none")
        for job in self.get_jobs():
            log.info("job %s: %s, min %d, max %d, %s", job.name, ", ".join(job.spec.functions),
                     job.min_processes, job.max_processes,
                     self.options(job).backend)
        assert self.autoscaler is not None
        self.autoscaler.manage(time.monotonic())  # fork min_processes now, not after a turn
        try:
            while True:
                self._turn()
                if self._stopping and not any(j.processes for j in self.jobs.values()):
                    break
                if self._reexec and not any(j.processes for j in self.jobs.values()):
                    self._reexec_now(self._reexec)
        finally:
            self._close()
        log.info("gearman-driver stopped")
        return 0

    def _turn(self) -> None:
        assert self.selector is not None and self.processes is not None
        if self.endpoints is not None and self.endpoints.loop_lag is not None:
            self.endpoints.loop_lag.turn(time.monotonic())
        before = time.monotonic()
        due = self.processes.next_start_due(before)
        wait = TURN_SECONDS if due is None else min(TURN_SECONDS, due - before)
        for key, mask in self.selector.select(wait):
            key.data(mask)
        now = time.monotonic()
        self.processes.reap(now)
        if self._reload_requested and not self.reload_in_progress:
            self._reload_requested = False  # a SIGHUP during a reload: read again after it
            self.reload()
        if self.trial is not None:
            self.trial.tick(now)
        assert self.autoscaler is not None
        active = not self._stopping and not self._reexec
        if active:
            self.autoscaler.manage(now)
            if not self._ready_sent:
                self._check_ready(now)
        self.processes.enforce_deadlines(now)
        self.autoscaler.tick(now, polling=active)
        if self.endpoints is not None:
            self.endpoints.tick(now)
        self.notifier.tick(now, self.status_text)
        self._gc.tick(now)

    # -- set-up and tear-down ------------------------------------------------------------------
    def _open(self) -> None:
        self.driver_id = f"{host_label()}:{os.getpid()}"  # as in our workers' client ids
        self.selector = selectors.DefaultSelector()
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._wakeup = (read_fd, write_fd)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _noop_handler)
        # a re-executed master starts with them blocked (see reexec.hold_signals): now they come
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        early = early_signals.take()  # while loading: acted on now, in the loop's first turn
        if early:
            os.write(write_fd, bytes(early))
        self.selector.register(read_fd, selectors.EVENT_READ, self._on_signal_pipe)
        self.scoreboard = Scoreboard(MAX_PROCESSES)
        self.processes = ProcessManager(
            self.jobs, self.scoreboard,
            servers=lambda: list(self.settings.server),
            options=self.options,
            graceful_timeout=lambda: float(self.settings.graceful_timeout),
            close_inherited=self.close_in_child,
            on_other_exit=lambda pid: self.trial is not None and self.trial.on_reaped(pid),
        )
        callback = self.unknown_job_callback
        self.autoscaler = Autoscaler(
            self.jobs, self.scoreboard, self.processes, self.selector, self.settings,
            driver_id=self.driver_id,
            on_unknown=(lambda info: callback(self, info)) if callback is not None else None)
        self.endpoints = Endpoints(self.selector, TURN_SECONDS, control=self.console_control,
                                   metrics_source=self._metrics_source)
        self.endpoints.open(self.settings)
        if self.handover is not None:  # the clients the master before this one left waiting
            for fd in self.handover.applied:
                self._applied_waiters.append(self.endpoints.adopt(fd, self.settings))
            for fd in self.handover.pending:
                self.request_reload(self.endpoints.adopt(fd, self.settings))
            self.handover = None

    def console_control(self) -> DriverControl:
        """What the console's commands may read and do: the job table, stops, reload."""
        from gearman_driver.console.control import DriverControl

        assert self.scoreboard is not None and self.processes is not None
        return DriverControl(self.jobs, self.scoreboard, stop=self.processes.stop,
                             shutdown=self.shutdown, request_reload=self.request_reload,
                             servers=self._server_rows)

    def _server_rows(self) -> list[ServerRow]:
        from gearman_driver.console.replies import ServerRow

        assert self.autoscaler is not None
        return [ServerRow(s.label, s.state, s.processes)
                for s in self.autoscaler.servers_seen()]

    def _metrics_source(self, loop_lag: LoopLag) -> MetricsSource:
        """What a scrape reads: the job table, the scoreboard, the last snapshot, counters."""
        from gearman_driver.master.metrics import MetricsSource

        return MetricsSource(
            jobs=self.jobs, scoreboard=lambda: self.scoreboard,
            snapshot=lambda: self.autoscaler.snapshot if self.autoscaler else None,
            backend=lambda: self.settings.worker_backend, reloads=self.reloads,
            loop_lag=lambda: loop_lag.value(time.monotonic()),
            servers=lambda: self.autoscaler.servers_seen() if self.autoscaler else [],
            reconnects=lambda: self.processes.reconnects() if self.processes else {})

    def follow_settings(self, old: Settings) -> None:
        """After a reload: a new server list or interval, and the log level in every worker
        process (the log file they open on their own)."""
        if old.loglevel != self.settings.loglevel and self.processes is not None:
            self.processes.signal_all(LEVEL_SIGNAL)
        if self.autoscaler is not None:
            self.autoscaler.configure(self.settings)

    def close_in_child(self) -> None:
        """Right after fork: drop the master's sockets, pipes and signal set-up."""
        signal.set_wakeup_fd(-1)
        if self.trial is not None:
            self.trial.close_in_child()
        if self._wakeup:
            for fd in self._wakeup:
                os.close(fd)
        if self.autoscaler is not None:
            self.autoscaler.close_in_child()
        if self.endpoints is not None:
            self.endpoints.close_in_child()
        if self.selector is not None:
            try:
                self.selector.close()
            except OSError:
                pass

    def _close(self) -> None:
        if self.trial is not None:
            self.trial.kill()
            self.trial = None
        if self.processes is not None:
            for process in list(self.jobs.processes()):
                self.processes.kill(process, "master exiting")
            deadline = time.monotonic() + 5
            while any(j.processes for j in self.jobs.values()) and time.monotonic() < deadline:
                self.processes.reap(time.monotonic())
                time.sleep(0.01)
        if self.endpoints is not None:
            self.endpoints.close()
        if self.autoscaler is not None:
            self.autoscaler.close()
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
                self.request_reload()
            elif signum == signal.SIGUSR1:
                if reopen_logfile():
                    log.info("log file reopened")

    @property
    def reload_in_progress(self) -> bool:
        """A trial of new worker code is running, or the master drains to re-execute itself."""
        return self.trial is not None or self._reexec is not None

    def reload(self) -> None:
        """SIGHUP: re-read the config files; keep the old configuration if they are invalid.
        It ends in finish_reload, now or once a trial of new worker code answered."""
        from gearman_driver.master.reload import apply_reload

        self._current_waiters, self._reload_waiters = self._reload_waiters, []
        apply_reload(self)

    def request_reload(self, done: Callable[[str | None], None] | None = None) -> None:
        """Reload on the next turn, as SIGHUP does; ``done`` learns that reload's outcome
        (at once when shutting down: no reload is done then)."""
        if self._stopping:
            if done is not None:
                done(SHUTTING_DOWN)
            return
        if done is not None:
            self._reload_waiters.append(done)
        self._reload_requested = True

    def finish_reload(self, error: str | None) -> None:
        """The one place a reload's outcome is known: None (applied) or why it was refused.
        Everyone who asked for this reload (console `reload`, `gearman-driver reload`) is told."""
        self.reloads["ok" if error is None else "failed"] += 1
        self.reload_outcome = ReloadOutcome(error is None, error or "", time.time())
        self.notifier.status(self.status_text())  # now, not at the next STATUS refresh
        waiters, self._current_waiters = self._current_waiters, []
        for done in waiters:
            done(error)

    def _check_ready(self, now: float) -> None:
        """READY=1 once readiness says so (see master/readiness.py)."""
        assert self.scoreboard is not None
        snapshot = self.autoscaler.snapshot if self.autoscaler is not None else None
        if not self._readiness.ready(self.jobs, self.scoreboard, snapshot, now):
            return
        self._ready_sent = True
        status = self.status_line()
        log.info("ready: %s", status)
        self.notifier.ready(status)
        if self._applied_waiters:  # the reload that re-executed the master is done
            self.reloads["ok"] += 1
            waiters, self._applied_waiters = self._applied_waiters, []
            for done in waiters:
                done(None)

    def rolling_restart(self, names: Sequence[str]) -> None:
        """Replace these jobs' processes: old ones finish the job in hand, new ones start now."""
        assert self.processes is not None
        for name in names:
            for process in list(self.jobs[name].processes.values()):
                self.processes.stop(process, "reload")

    def request_reexec(self, settings: Settings, code: CodeStamp) -> bool:
        """Drain every process, then exec a fresh master that runs `settings` and the code of
        stamp `code` (what the reload checked). False when this master was not started by the
        CLI and cannot exec itself again."""
        if not self.reexec_allowed:
            return False
        self._reexec = Accepted(settings, code)  # RELOADING=1 is sent; the new one: READY=1
        assert self.processes is not None
        for process in list(self.jobs.processes()):
            self.processes.stop(process, "re-exec")
        return True

    def _reexec_now(self, accepted: Accepted) -> None:
        """Every process has drained: exec the new master, handing it the accepted settings
        and the clients waiting for a reload; or, if the code changed meanwhile, refuse the
        reload and go on with the old code (the next turn starts the processes again)."""
        from gearman_driver.master.reexec import detach_all, hold_signals, reexec

        why = accepted.code_changed_since()
        if why is not None:
            self._reexec = None
            self.finish_reload(why)
            log.error("%s", self.status_text())
            self.notifier.ready()
            return
        handover = Handover(accepted.settings,
                            applied=detach_all(self._current_waiters, None),
                            pending=detach_all(self._reload_waiters, "gearman-driver re-executed "
                                               "itself before this reload ran; ask again"))
        self._current_waiters, self._reload_waiters = [], []
        hold_signals(HANDLED_SIGNALS, self._wakeup[0] if self._wakeup else None)
        self._close()
        handover.give()
        reexec(self.settings.daemonize)

    # -- what STATUS reads --------------------------------------------------------------------
    def status_text(self) -> str:
        """STATUS: a refused reload's reason until the next good one, else the status line."""
        failed = self.reload_outcome.status if self.reload_outcome is not None else None
        return failed or self.status_line()

    def status_line(self) -> str:
        assert self.scoreboard is not None
        processes = list(self.jobs.processes())
        busy = sum(1 for p in processes if self.scoreboard.busy(p.slot))
        text = f"{len(processes)} processes ({busy} busy) in {len(self.jobs)} jobs"
        servers = servers_summary(self.autoscaler.servers_seen() if self.autoscaler else [])
        return f"{text}; {servers}" if servers else text


def _noop_handler(signum: int, frame: object) -> None:
    """The wakeup fd carries the signal; the loop handles it."""
