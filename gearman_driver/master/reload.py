"""SIGHUP: re-read the config; apply what can change live, restart only what must.

- invalid config: nothing changes; the error is logged and shown in STATUS until a good reload;
- limits, interval, max_idle_time, job timeouts, logging: live, no process restarted;
- keepalive: for the connections made from now on (new processes, the master's polls), said
  in the log; running processes keep theirs until replaced;
- worker_options of a class: new worker objects for that class, a rolling restart of its jobs;
- server, or a job's max_jobs_per_process / worker_backend / max_rss_mb, or max_workload_mb:
  a rolling restart of those jobs;
- namespaces or lib, or worker code changed on disk: the master cannot re-import cleanly in
  process, so it drains every process gracefully and re-executes itself (gunicorn's USR2
  model; the pid stays, so systemd keeps tracking it).
Whenever new worker objects are needed, the new code is first loaded in a throw-away trial
process (see `trial`): a reload whose code cannot be loaded is refused before anything is
drained. A rolling restart asks the old processes to finish the job in hand while new ones start
at once with the new settings, so no job in hand is lost and gearmand keeps the queued ones.
What must change is decided in `reload_plan` (pure); this module applies it to the master,
which it is handed as a `ReloadTarget` (what a reload reads and changes), not as the Driver.
Every reload ends in `Driver.finish_reload`, which keeps its `ReloadOutcome` (STATUS shows a
refused one) and tells whoever asked for it (console `reload`, `gearman-driver reload`).
"""

from __future__ import annotations

import logging
import selectors
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gearman_driver.api import Worker
from gearman_driver.config.reader import read_settings
from gearman_driver.config.settings import ConfigError, Settings
from gearman_driver.jobs.codestamp import CodeStamp, restamp
from gearman_driver.jobs.table import JobTable, LoadError
from gearman_driver.logs import install, open_configured
from gearman_driver.master.pidfile import PidFile, PidFileLocked
from gearman_driver.master.reload_plan import (
    ReloadOutcome,
    changed_classes,
    rebuilt_specs,
    reexec_reason,
    refusal,
    restart_needed,
)
from gearman_driver.master.trial import start_trial
from gearman_driver.paths import CannotCreate

if TYPE_CHECKING:
    from gearman_driver.master.endpoints import Endpoints, Moves
    from gearman_driver.master.processes import ProcessManager
    from gearman_driver.master.systemd import Notifier
    from gearman_driver.master.trial import Trial

log = logging.getLogger("gearman_driver.reload")


class ReloadTarget(Protocol):
    """What a reload reads and changes of the master (master/driver.py's Driver)."""

    settings: Settings
    cli_overrides: Mapping[str, Any]
    jobs: JobTable
    loaded_workers: dict[str, Worker]
    code: CodeStamp
    pidfile: PidFile | None
    reexec_allowed: bool
    selector: selectors.BaseSelector | None
    trial: Trial | None
    notifier: Notifier
    processes: ProcessManager | None
    endpoints: Endpoints | None
    reload_outcome: ReloadOutcome | None

    def close_in_child(self) -> None: ...
    def request_reexec(self, settings: Settings, code: CodeStamp) -> bool: ...
    def finish_reload(self, error: str | None) -> None: ...
    def rolling_restart(self, names: Sequence[str]) -> None: ...
    def follow_settings(self, old: Settings) -> None: ...


@dataclass
class _Prepared:
    """A reload between reading the files and applying them: what was opened for it already
    (so that a mistake there refuses it before anything changed) is closed if it is refused."""

    old: Settings
    new: Settings
    reexec: bool = False
    log_handler: logging.Handler | None = None  # when the logging settings changed
    moves: Moves | None = None  # the console's and metrics' new listeners, bound already
    pidfile: PidFile | None = None  # the new pid file, locked already

    def discard(self) -> None:
        if self.log_handler is not None:
            self.log_handler.close()
            self.log_handler = None
        if self.moves is not None:
            self.moves.discard()
            self.moves = None
        if self.pidfile is not None:
            self.pidfile.release()
            self.pidfile = None


def apply_reload(driver: ReloadTarget) -> None:
    """Re-read the config files and apply them, now or once the new worker code loaded in a
    trial process; on any mistake nothing changes (the outcome says why)."""
    old = driver.settings
    driver.notifier.reloading()
    prepared: _Prepared | None = None
    try:
        new = read_settings(old.config_files, driver.cli_overrides)
        prepared = _Prepared(old, new)
        refused = refusal(old, new)
        if refused is not None:
            raise ConfigError(refused)
        if (new.loglevel, new.logfile, new.loglayout) != (old.loglevel, old.logfile,
                                                         old.loglayout):
            prepared.log_handler = open_configured(new)
        if driver.endpoints is not None:
            prepared.moves = driver.endpoints.prepare(old, new)
        reason = reexec_reason(old, new, driver.code, restamp(driver.code))
        if reason is not None:
            log.info("%s: the master will re-execute itself", reason)
        prepared.reexec = reason is not None
        if prepared.reexec and not driver.reexec_allowed:
            raise ConfigError("the change needs a restart of gearman-driver (namespaces, lib "
                              "or worker code changed)")
        if not prepared.reexec and new.pidfile != old.pidfile:
            prepared.pidfile = _lock_pidfile(new, driver.pidfile)
        if prepared.reexec or changed_classes(driver.loaded_workers, old, new):
            assert driver.selector is not None
            ready = prepared
            driver.trial = start_trial(old, new, driver.selector, driver.close_in_child,
                                       lambda error, code: _tried(driver, ready, error, code))
            return
        _apply(driver, prepared)
    except (ConfigError, LoadError, OSError) as exc:
        _refuse(driver, str(exc), prepared)


def _lock_pidfile(new: Settings, current: PidFile | None) -> PidFile | None:
    """The new pid file, locked and written before the old one is let go (None: no pid file
    any more); one that cannot be is the reload's refusal, at the `pidfile` key."""
    if not new.pidfile:
        return None
    pidfile = PidFile(new.pidfile)
    try:
        pidfile.acquire(write=True)
    except (CannotCreate, PidFileLocked) as exc:
        if current is not None and current.same_file(new.pidfile):
            return None  # the same file under another name: keep the lock we hold
        raise ConfigError(f"{new.locate('pidfile')}: {exc}") from None
    return pidfile


def _tried(driver: ReloadTarget, prepared: _Prepared, error: str | None,
           code: CodeStamp | None) -> None:
    """The trial answered (or ran out of time): go on with the reload, or refuse it."""
    driver.trial = None
    if error is not None or code is None:
        _refuse(driver, error or "the trial gave no stamp of the code it loaded", prepared)
        return
    if prepared.reexec:
        prepared.discard()  # the new master opens what it needs itself
        log.info("the new worker code loads: re-executing the master")
        # the new master sends READY=1 and answers whoever asked for this reload
        driver.request_reexec(prepared.new, code)
        return
    try:
        _apply(driver, prepared)
    except (ConfigError, LoadError) as exc:
        _refuse(driver, str(exc), prepared)


def _refuse(driver: ReloadTarget, error: str, prepared: _Prepared | None) -> None:
    if prepared is not None:
        prepared.discard()
    driver.finish_reload(error)
    log.error("%s", driver.reload_outcome.status if driver.reload_outcome else error)
    driver.notifier.ready()


def _apply(driver: ReloadTarget, prepared: _Prepared) -> None:
    old, new = prepared.old, prepared.new
    new_specs, new_workers = rebuilt_specs(driver.loaded_workers, driver.jobs, old, new)
    driver.loaded_workers.update(new_workers)
    driver.settings = new
    restart = {name for name, spec in new_specs.items()
               if restart_needed(driver.jobs[name].spec, spec, old, new)}
    assert driver.processes is not None
    for name, spec in new_specs.items():
        job = driver.jobs[name]
        job.respec(spec)
        driver.processes.forget_failures(job)
    if restart:
        driver.rolling_restart(sorted(restart))
    if prepared.log_handler is not None:
        install(prepared.log_handler, new.loglevel)
        prepared.log_handler = None
    if prepared.moves is not None and driver.endpoints is not None:
        driver.endpoints.commit(prepared.moves, old, new)
        prepared.moves = None
    if new.pidfile != old.pidfile and (prepared.pidfile is not None or not new.pidfile):
        if driver.pidfile is not None:
            driver.pidfile.release()
        driver.pidfile, prepared.pidfile = prepared.pidfile, None
    driver.follow_settings(old)
    if old.keepalive != new.keepalive:
        log.info("keepalive changed from %gs to %gs: it applies to connections made from now "
                 "on (processes started from now on, the master's polls of gearmand); running "
                 "processes keep %gs until they are replaced", old.keepalive, new.keepalive,
                 old.keepalive)
    driver.finish_reload(None)
    log.info("configuration reloaded from %s%s", ", ".join(new.config_files) or "no file",
             f"; restarting {', '.join(sorted(restart))}" if restart else "")
    driver.notifier.ready()

