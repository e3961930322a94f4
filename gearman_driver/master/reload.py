"""SIGHUP: re-read the config; apply what can change live, restart only what must.

- invalid config: nothing changes; the error is logged and shown in STATUS until a good reload;
- limits, interval, max_idle_time, job timeouts, logging: live, no process restarted;
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
Every reload ends in `Driver.finish_reload`, which keeps its `ReloadOutcome` (STATUS shows a
refused one) and tells whoever asked for it (console `reload`, `gearman-driver reload`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gearman_driver.config.settings import ConfigError, Settings, load_settings, options_for
from gearman_driver.jobs.loader import (
    apply_runtime_attributes,
    build_worker,
    job_specs,
    module_stamps,
)
from gearman_driver.jobs.table import JobSpec, LoadError
from gearman_driver.logs import install, open_configured
from gearman_driver.master.trial import start_trial
from gearman_driver.paths import CannotCreate

if TYPE_CHECKING:
    from gearman_driver.master.driver import Driver

log = logging.getLogger("gearman_driver.reload")

CONSOLE_KEYS = ("console_socket", "console_port", "console_host")
CHILD_SIDE_ATTRIBUTES = ("max_jobs_per_process", "worker_backend", "max_rss_mb")
CHILD_SIDE_SETTINGS = ("worker_backend", "max_jobs_per_process", "max_jobs_jitter",
                       "max_rss_mb", "max_workload_mb")


@dataclass(frozen=True)
class ReloadOutcome:
    """How a reload ended: applied (`ok`), or refused with its one-line `error`."""

    ok: bool
    error: str = ""
    finished_at: float = 0.0  # time.time()

    @property
    def status(self) -> str | None:
        """What STATUS shows instead of the process counts, until the next good reload."""
        return None if self.ok else (f"reload failed: {self.error}; "
                                     f"running on the previous configuration")


@dataclass
class _Prepared:
    """A reload between reading the files and applying them: what was opened for it already
    (so that a mistake there refuses it before anything changed) is closed if it is refused."""

    old: Settings
    new: Settings
    reexec: bool = False
    log_handler: logging.Handler | None = None  # when the logging settings changed

    def discard(self) -> None:
        if self.log_handler is not None:
            self.log_handler.close()
            self.log_handler = None


def apply_reload(driver: Driver) -> None:
    """Re-read the config files and apply them, now or once the new worker code loaded in a
    trial process; on any mistake nothing changes (the outcome says why)."""
    old = driver.settings
    driver.notifier.reloading()
    prepared: _Prepared | None = None
    try:
        new = load_settings(old.config_files, driver.cli_overrides)
        prepared = _Prepared(old, new)
        if (new.loglevel, new.logfile, new.loglayout) != (old.loglevel, old.logfile,
                                                         old.loglayout):
            prepared.log_handler = open_configured(new)
        _probe_console(driver, old, new)
        prepared.reexec = _needs_reexec(driver, old, new)
        if prepared.reexec and not driver.reexec_allowed:
            raise ConfigError("the change needs a restart of gearman-driver (namespaces, lib "
                              "or worker code changed)")
        if prepared.reexec or _changed_classes(driver, old, new):
            assert driver.selector is not None
            ready = prepared
            driver.trial = start_trial(old, new, driver.selector, driver.close_in_child,
                                       lambda error: _tried(driver, ready, error))
            return
        _apply(driver, prepared)
    except (ConfigError, LoadError, OSError) as exc:
        _refuse(driver, str(exc), prepared)


def _tried(driver: Driver, prepared: _Prepared, error: str | None) -> None:
    """The trial answered (or ran out of time): go on with the reload, or refuse it."""
    driver.trial = None
    if error is not None:
        _refuse(driver, error, prepared)
        return
    if prepared.reexec:
        prepared.discard()  # the new master opens what it needs itself
        log.info("the new worker code loads: re-executing the master")
        driver.request_reexec()  # the new master sends READY=1
        driver.finish_reload(None)
        return
    try:
        _apply(driver, prepared)
    except (ConfigError, LoadError) as exc:
        _refuse(driver, str(exc), prepared)


def _refuse(driver: Driver, error: str, prepared: _Prepared | None) -> None:
    if prepared is not None:
        prepared.discard()
    driver.finish_reload(error)
    log.error("%s", driver.reload_outcome.status if driver.reload_outcome else error)
    driver.notifier.ready()


def _apply(driver: Driver, prepared: _Prepared) -> None:
    old, new = prepared.old, prepared.new
    new_specs = _rebuilt_specs(driver, old, new)
    driver.settings = new
    restart = {name for name, spec in new_specs.items()
               if _restart_needed(driver.jobs[name].spec, spec, old, new)}
    assert driver.processes is not None
    for name, spec in new_specs.items():
        job = driver.jobs[name]
        job.spec = spec
        job.min_processes, job.max_processes = spec.min_processes, spec.max_processes
        driver.processes.forget_failures(job)
    if restart:
        driver.rolling_restart(sorted(restart))
    if prepared.log_handler is not None:
        install(prepared.log_handler, new.loglevel)
        prepared.log_handler = None
    _follow_settings(driver, old)
    driver.finish_reload(None)
    log.info("configuration reloaded from %s%s", ", ".join(new.config_files) or "no file",
             f"; restarting {', '.join(sorted(restart))}" if restart else "")
    driver.notifier.ready()


def _follow_settings(driver: Driver, old: Settings) -> None:
    """After a reload: follow a new server list, console and metrics address."""
    new = driver.settings
    if driver.autoscaler is not None:
        driver.autoscaler.configure(new)
    for attr, keys in (("console", ("console_port", "console_host", "console_socket")),
                       ("metrics", ("metrics_port", "metrics_host"))):
        if any(getattr(old, k) != getattr(new, k) for k in keys):
            if getattr(driver, attr) is not None:
                getattr(driver, attr).close()
                setattr(driver, attr, None)
            try:
                getattr(driver, f"open_{attr}")()
            except OSError as exc:
                log.error("cannot open the %s on its new address: %s", attr, exc)
    if driver.console is not None and old.console_allow_users != new.console_allow_users:
        from gearman_driver.peercred import resolve_users

        driver.console.allowed_uids = resolve_users(new.console_allow_users)


def _probe_console(driver: Driver, old: Settings, new: Settings) -> None:
    """A console address that cannot be opened refuses the reload, located at its key."""
    if all(getattr(old, k) == getattr(new, k) for k in CONSOLE_KEYS):
        return
    if not new.console_port and not new.console_socket:
        return
    from gearman_driver.console.server import probe

    assert driver.selector is not None
    try:
        probe(driver.console, driver.console_control(), driver.selector, new.console_host,
              new.console_port or None, new.console_socket)
    except CannotCreate as exc:
        key = next((k for k in CONSOLE_KEYS if str(exc).startswith(k)), "console_socket")
        raise ConfigError(f"{new.locate(key)}: {exc}") from None


def _needs_reexec(driver: Driver, old: Settings, new: Settings) -> bool:
    if (old.namespaces, old.lib) != (new.namespaces, new.lib):
        log.info("namespaces or lib changed: the master will re-execute itself")
        return True
    changed = [name for name, (path, mtime) in module_stamps(new.namespaces).items()
               if driver.module_stamps.get(name, (path, mtime))[1] != mtime]
    if changed:
        log.info("worker code changed (%s): the master will re-execute itself",
                 ", ".join(changed))
        return True
    return False


def _changed_classes(driver: Driver, old: Settings, new: Settings) -> set[str]:
    """Classes whose worker objects must be built again: new server list or options."""
    return {path for path in driver.loaded_workers
            if old.server_string != new.server_string
            or options_for(old, path) != options_for(new, path)}


def _rebuilt_specs(driver: Driver, old: Settings, new: Settings) -> dict[str, JobSpec]:
    """Every loaded job's spec under the new settings (new worker objects where needed)."""
    specs: list[JobSpec] = []
    rebuilt = _changed_classes(driver, old, new)
    for path, current in driver.loaded_workers.items():
        if path not in rebuilt:
            specs.extend(job_specs(current))
            continue
        worker = build_worker(type(current), new.server_string, options_for(new, path))
        specs.extend(job_specs(worker))
    known = {name for name in driver.jobs if driver.jobs[name].spec.class_path in
             driver.loaded_workers}
    names = {spec.name for spec in specs}
    if names != known:
        raise LoadError("the new worker_options change which jobs the classes define; "
                        "restart gearman-driver to apply them")
    specs = apply_runtime_attributes(specs, new.job_runtime_attributes, new.error)
    result = {spec.name: spec for spec in specs}
    for name in driver.jobs:  # jobs added with add_job keep their spec and limits
        if name not in result:
            result[name] = driver.jobs[name].spec
    driver.loaded_workers.update({spec.class_path: spec.worker for spec in specs
                                  if spec.class_path in rebuilt})
    return result


def _restart_needed(current: JobSpec, new: JobSpec, old: Settings, settings: Settings) -> bool:
    if current.worker is not new.worker or old.server != settings.server:
        return True
    if any(getattr(current, a) != getattr(new, a) for a in CHILD_SIDE_ATTRIBUTES):
        return True
    return any(getattr(old, key) != getattr(settings, key) for key in CHILD_SIDE_SETTINGS)


def hold_signals(signals: Iterable[int], wakeup_fd: int | None) -> None:
    """Before re-executing: block `signals` (the mask survives exec) so that one arriving
    before the new image has its handlers (the default action of SIGHUP or SIGTERM would kill
    the master) waits until the new master is ready and unblocks them; those already in the
    self-pipe (`wakeup_fd`), which exec closes, are raised again to wait with them."""
    held = set(signals)
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    pending = b""
    if wakeup_fd is not None:
        try:
            pending = os.read(wakeup_fd, 4096)
        except BlockingIOError:
            pass
    for signum in set(pending) & {int(s) for s in held} - {signal.SIGCHLD}:
        os.kill(os.getpid(), signum)


def reexec_argv(daemonized: bool) -> list[str]:
    """The command line that started this master, to exec it again (in the foreground).

    The script that started us runs again (the Debian package's puts its private library
    directory on sys.path); under `python -m gearman_driver.cli` the module runs again."""
    extra = ["--no-daemonize"] if daemonized else []
    script = sys.argv[0]
    if os.path.isfile(script) and not script.endswith(os.path.join("gearman_driver", "cli.py")):
        return [sys.executable, script, *sys.argv[1:], *extra]
    return [sys.executable, "-m", "gearman_driver.cli", *sys.argv[1:], *extra]


def reexec(daemonized: bool) -> None:
    """Replace this process with a fresh master (same pid); only after every child is gone."""
    argv = reexec_argv(daemonized)
    log.info("re-executing: %s", " ".join(argv))
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execv(sys.executable, argv)
