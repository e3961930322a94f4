"""A reload's decisions without a master: which classes get new worker objects, which jobs
roll, when the master must re-execute itself, and when the reload is refused."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from gearman_driver import Worker, job
from gearman_driver.config.settings import Settings, load_settings
from gearman_driver.jobs.codestamp import GONE, CodeStamp, changes, digest, restamp
from gearman_driver.jobs.loader import job_specs
from gearman_driver.jobs.table import JobSpec, JobTable, LoadError
from gearman_driver.master.reload_plan import (
    APPLIED_BY,
    ReloadOutcome,
    changed_classes,
    rebuilt_specs,
    reexec_reason,
    refusal,
    restart_needed,
)

IMAGES = f"{__name__}.Images"
MAIL = f"{__name__}.Mail"


class Images(Worker):
    @job(min_processes=1, max_processes=4)
    def resize(self, gearman_job: Any, workload: bytes) -> bytes:
        return workload


class Mail(Worker):
    @job
    def send(self, gearman_job: Any, workload: bytes) -> bytes:
        return workload


def settings(tmp_path: Path, name: str, **config: Any) -> Settings:
    path = tmp_path / f"{name}.yml"
    path.write_text(json.dumps(config))  # YAML reads JSON
    return load_settings([str(path)])


def loaded(old: Settings) -> tuple[dict[str, Worker], JobTable]:
    """What the master holds after loading: a worker object per class, the job table."""
    workers: dict[str, Worker] = {IMAGES: Images(server=old.server_string),
                                  MAIL: Mail(server=old.server_string)}
    jobs = JobTable()
    for worker in workers.values():
        for spec in job_specs(worker):
            jobs.add(spec)
    return workers, jobs


def rolled(tmp_path: Path, old_config: dict[str, Any], new_config: dict[str, Any]) -> set[str]:
    old = settings(tmp_path, "old", **old_config)
    new = settings(tmp_path, "new", **new_config)
    workers, jobs = loaded(old)
    specs, _ = rebuilt_specs(workers, jobs, old, new)
    return {name.rsplit(".", 1)[1] for name, spec in specs.items()
            if restart_needed(jobs[name].spec, spec, old, new)}


def test_limits_and_timeouts_change_live_without_rolling(tmp_path: Path) -> None:
    attributes = {f"{IMAGES}.resize": {"min_processes": 2, "max_processes": 9, "timeout": 5}}
    assert rolled(tmp_path, {}, {"job_runtime_attributes": attributes, "interval": 3,
                                 "max_idle_time": 7}) == set()


def test_a_jobs_own_process_settings_roll_that_job_only(tmp_path: Path) -> None:
    for key, value in (("max_jobs_per_process", 10), ("worker_backend", "pygearman"),
                       ("max_rss_mb", 100)):
        attributes = {f"{IMAGES}.resize": {key: value}}
        assert rolled(tmp_path, {}, {"job_runtime_attributes": attributes}) == {"resize"}, key


def test_top_level_process_settings_and_servers_roll_every_job(tmp_path: Path) -> None:
    for config in ({"max_jobs_per_process": 10}, {"max_jobs_jitter": 3},
                   {"max_workload_mb": 8}, {"worker_backend": "pygearman"},
                   {"server": "other:4730"}):
        assert rolled(tmp_path, {}, config) == {"resize", "send"}, config


def test_new_worker_options_rebuild_and_roll_that_class_only(tmp_path: Path) -> None:
    old = settings(tmp_path, "old")
    new = settings(tmp_path, "new", worker_options={MAIL: {"relay": "smtp"}})
    workers, jobs = loaded(old)
    assert changed_classes(workers, old, new) == {MAIL}
    specs, rebuilt = rebuilt_specs(workers, jobs, old, new)
    assert set(rebuilt) == {MAIL} and rebuilt[MAIL].options == {"relay": "smtp"}
    assert specs[f"{IMAGES}.resize"].worker is workers[IMAGES]
    assert rolled(tmp_path, {}, {"worker_options": {MAIL: {"relay": "smtp"}}}) == {"send"}


def test_a_new_server_list_rebuilds_every_class(tmp_path: Path) -> None:
    old = settings(tmp_path, "old")
    new = settings(tmp_path, "new", server="a:1,b:2")
    workers, _ = loaded(old)
    assert changed_classes(workers, old, new) == {IMAGES, MAIL}


def test_jobs_added_with_add_job_keep_their_spec(tmp_path: Path) -> None:
    old = settings(tmp_path, "old")
    workers, jobs = loaded(old)
    extra = JobSpec("extra", Mail(server=""), "elsewhere.Extra", (), 0, 1)
    jobs.add(extra)
    specs, _ = rebuilt_specs(workers, jobs, old, settings(tmp_path, "new", interval=2))
    assert specs["extra"] is extra


def test_options_that_change_which_jobs_a_class_defines_are_refused(tmp_path: Path) -> None:
    old = settings(tmp_path, "old")
    workers, jobs = loaded(old)
    jobs.add(JobSpec("gone", workers[MAIL], MAIL, (), 0, 1))  # the class no longer has it
    with pytest.raises(LoadError, match="change which jobs the classes define"):
        rebuilt_specs(workers, jobs, old, settings(tmp_path, "new"))


def test_what_decides_the_imported_code_or_the_code_itself_needs_a_reexec(
        tmp_path: Path) -> None:
    old = settings(tmp_path, "old", namespaces=["a"])
    stamp = CodeStamp({"a.mod": ("/x/a/mod.py", "1111")}, {"a": ("/x/a",)},
                      {"a": ("a", "a.mod")})
    assert reexec_reason(old, old, stamp, stamp) is None
    for name, config, key in (("ns", {"namespaces": ["b"]}, "namespaces"),
                              ("lib", {"namespaces": ["a"], "lib": ["/l"]}, "lib"),
                              ("wanted", {"namespaces": ["a"], "wanted": "m:f"}, "wanted"),
                              ("cb", {"namespaces": ["a"], "unknown_job_callback": "m:f"},
                               "unknown_job_callback")):
        assert reexec_reason(old, settings(tmp_path, name, **config), stamp,
                             stamp) == f"{key} changed"
    edited = CodeStamp({"a.mod": ("/x/a/mod.py", "2222")}, stamp.dirs, stamp.found)
    assert reexec_reason(old, old, stamp, edited) == "worker code changed (a.mod)"
    added = CodeStamp(stamp.files, stamp.dirs, {"a": ("a", "a.mod", "a.new")})
    assert reexec_reason(old, old, stamp, added) == "worker code changed (a.new)"
    gone = CodeStamp({"a.mod": ("/x/a/mod.py", GONE)}, stamp.dirs, stamp.found)
    assert reexec_reason(old, old, stamp, gone) == "worker code changed (a.mod)"


def test_a_file_rewritten_with_its_old_mtime_is_still_a_change(tmp_path: Path) -> None:
    module = tmp_path / "mod.py"
    module.write_text("A = 1\n")
    before = CodeStamp({"m": (str(module), digest(str(module)))})
    stat = module.stat()
    module.write_text("A = 2\n")
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as rsync -t or tar would
    assert changes(before, restamp(before)) == ["m"]


def test_every_setting_is_applied_somehow_by_a_reload() -> None:
    """A reload answers OK only for what it applies: each field of Settings says how."""
    assert {f.name for f in dataclasses.fields(Settings)} == set(APPLIED_BY)


def test_a_setting_a_running_master_cannot_take_refuses_the_reload(tmp_path: Path) -> None:
    old = settings(tmp_path, "old")
    assert refusal(old, old) is None
    why = refusal(old, settings(tmp_path, "new", daemonize=True))
    assert why is not None and why.startswith(f"{tmp_path / 'new.yml'}:1:")
    assert why.endswith(": daemonize: cannot change while gearman-driver runs; restart it to "
                        "apply the new value")


def test_a_refused_reload_shows_in_status_until_a_good_one() -> None:
    assert ReloadOutcome(True).status is None
    assert ReloadOutcome(False, "config.yml:3:1: interval: expected a number").status == (
        "reload failed: config.yml:3:1: interval: expected a number; running on the previous "
        "configuration")
