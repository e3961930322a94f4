"""SIGHUP: re-read the config; apply what can change live, keep the old config if it is bad."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gearman_driver.config import ConfigError, load_settings
from gearman_driver.logs import setup_logging

if TYPE_CHECKING:
    from gearman_driver.driver import Driver

log = logging.getLogger("gearman_driver.reload")


def apply_reload(driver: Driver) -> bool:
    """Limits, interval, max_idle_time and loglevel change live, with no process restarted."""
    old = driver.settings
    driver.notifier.reloading()
    try:
        new = load_settings(old.config_files, driver.cli_overrides)
        for key in new.job_runtime_attributes:
            if key not in driver.jobs:
                raise new.error(("job_runtime_attributes", key), "names no job")
    except ConfigError as exc:
        log.error("reload failed: %s; running on the previous configuration", exc)
        driver.notifier.override = (f"reload failed: {exc}; "
                                    f"running on the previous configuration")
        driver.notifier.ready()
        return False
    driver.settings = new
    for name in driver.jobs:
        job = driver.jobs[name]
        attrs = new.job_runtime_attributes.get(name, {})
        job.min_processes = attrs.get("min_processes", job.spec.min_processes)
        job.max_processes = attrs.get("max_processes", job.spec.max_processes)
    if (new.loglevel, new.logfile, new.loglayout) != (old.loglevel, old.logfile, old.loglayout):
        setup_logging(new.loglevel, new.logfile, new.loglayout)
    driver.notifier.override = None
    log.info("configuration reloaded from %s", ", ".join(new.config_files) or "no file")
    driver.notifier.ready()
    return True
