"""The daemon as a systemd service: sd_notify, SIGHUP reload, SIGUSR1, daemon mode, journal."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from tests.driver_util import DriverProcess, alive, run_cli
from tests.gearmand_util import TestClient, wait_for

PAIR = {"namespaces": ["tw.pair"], "interval": 1}


def pids_by_job(driver: Any) -> dict[str, set[int]]:
    result: dict[str, set[int]] = {}
    for client_id, _ in driver.workers():
        _, pid, _, job_name = client_id.split(":", 3)
        result.setdefault(job_name, set()).add(int(pid))
    return result


def test_notify_sequence_status_and_watchdog(gearmand, driver_factory, notify) -> None:
    driver = driver_factory(gearmand, PAIR, env={"NOTIFY_SOCKET": str(notify.path),
                                                 "WATCHDOG_USEC": "400000"})
    assert notify.wait_keys(["READY"])
    # READY only once the min processes are registered with gearmand
    assert driver.registered("alpha.opts") == 2 and driver.registered("beta.opts") == 1
    driver.signal(signal.SIGHUP)
    assert notify.wait_keys(["READY", "RELOADING", "READY"])
    reloading = next(m for m in notify.messages if "RELOADING" in m)
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert wait_for(lambda: any("4 processes (0 busy) in 3 jobs" in s
                                for s in notify.statuses()), 5)
    assert wait_for(lambda: sum("WATCHDOG" in m for m in notify.drain()) >= 3, 5)
    driver.signal(signal.SIGTERM)
    assert driver.wait_exit(15) == 0
    assert notify.keys() == ["READY", "RELOADING", "READY", "STOPPING"]


def test_reload_changes_limits_live_without_restarting_anything(gearmand, driver_factory,
                                                                 notify) -> None:
    driver = driver_factory(gearmand, PAIR, env={"NOTIFY_SOCKET": str(notify.path)})
    assert notify.wait_keys(["READY"])
    before = pids_by_job(driver)
    driver.rewrite_config({"job_runtime_attributes": {
        "alpha.work": {"min_processes": 3, "max_processes": 5},
        "alpha.opts": {"min_processes": 1, "max_processes": 6}}})
    driver.signal(signal.SIGHUP)
    assert driver.wait_registered("alpha.work", 3)
    assert driver.wait_registered("alpha.opts", 1)
    after = pids_by_job(driver)
    assert before["alpha.work"] < after["alpha.work"]  # the old one kept, two added
    assert after["alpha.opts"] < before["alpha.opts"]  # one stopped, the other kept
    assert after["beta.opts"] == before["beta.opts"]


def test_reload_with_broken_config_keeps_the_old_one_and_says_so(gearmand, driver_factory,
                                                                  notify) -> None:
    driver = driver_factory(gearmand, PAIR, env={"NOTIFY_SOCKET": str(notify.path)})
    assert notify.wait_keys(["READY"])
    before = pids_by_job(driver)
    driver.config_path.write_text("interval: [1\n")
    driver.signal(signal.SIGHUP)
    assert notify.wait_keys(["READY", "RELOADING", "READY"])
    assert wait_for(lambda: any(s.startswith(f"reload failed: {driver.config_path}:")
                                and "running on the previous configuration" in s
                                for s in notify.statuses()), 5)
    assert "reload failed" in driver.log()
    assert pids_by_job(driver) == before
    with TestClient(gearmand) as client:
        assert client.submit("alpha.work", b"").final == "complete"
    driver.config_path.write_text(json.dumps(_base_for(gearmand)))  # fixed: the next reload
    driver.signal(signal.SIGHUP)                                     # clears the message
    assert notify.wait_keys(["READY", "RELOADING", "READY", "RELOADING", "READY"])
    # by the time systemd hears READY=1, STATUS no longer says the reload failed
    last_status_before_ready = ""
    for message in notify.drain():
        if "STATUS" in message:
            last_status_before_ready = message["STATUS"]
        if "READY" in message:
            ready_status = last_status_before_ready
    assert not ready_status.startswith("reload failed"), ready_status


def test_reload_with_new_worker_options_replaces_only_that_class(gearmand, driver_factory,
                                                                  notify) -> None:
    driver = driver_factory(gearmand, {**PAIR, "worker_options": {"GLOBAL": {"v": 1}}},
                            env={"NOTIFY_SOCKET": str(notify.path)})
    assert notify.wait_keys(["READY"])
    before = pids_by_job(driver)
    driver.rewrite_config({"worker_options": {"GLOBAL": {"v": 1},
                                              "tw.pair.workers.Alpha": {"v": 2}}})
    driver.signal(signal.SIGHUP)

    def replaced() -> bool:
        now = pids_by_job(driver)
        return all(now.get(job, set()).isdisjoint(before[job]) and
                   len(now.get(job, ())) == len(before[job]) for job in ("alpha.opts",
                                                                         "alpha.work"))

    assert wait_for(replaced, 15)
    after = pids_by_job(driver)
    assert after["beta.opts"] == before["beta.opts"]
    with TestClient(gearmand) as client:
        alpha = json.loads(client.submit("alpha.opts", b"").result)
        beta = json.loads(client.submit("beta.opts", b"").result)
    assert alpha["options"] == {"v": 2} and alpha["pid"] in after["alpha.opts"]
    assert beta["options"] == {"v": 1}


def test_fifty_reloads_during_steady_load_lose_no_job(gearmand, driver_factory) -> None:
    driver = driver_factory(gearmand, PAIR)
    assert driver.wait_registered("alpha.work", 1)
    results: list[tuple[bytes, str, bytes]] = []
    done = threading.Event()

    def load(worker: int) -> None:
        with TestClient(gearmand, timeout=60) as client:
            i = 0
            while not done.is_set():
                payload = f"0:{worker}-{i}".encode()
                outcome = client.submit("alpha.work", payload)
                results.append((payload, outcome.final, outcome.result))
                i += 1

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        for n in range(50):
            limits = {"min_processes": 1 + n % 3, "max_processes": 4}
            driver.rewrite_config({"job_runtime_attributes": {"alpha.work": limits}})
            driver.signal(signal.SIGHUP)
            # one reload at a time: SIGHUPs sent during a reload would coalesce
            assert wait_for(lambda n=n: reloads(driver) == n + 1, 30), reloads(driver)
    finally:
        done.set()
        for thread in threads:
            thread.join(30)
    assert len(results) > 100
    assert all(final == "complete" and result == payload for payload, final, result in results)
    assert reloads(driver) == 50
    assert driver.proc is not None and driver.proc.poll() is None


def reloads(driver: DriverProcess) -> int:
    return driver.log().count("configuration reloaded")


def test_sigusr1_reopens_the_log_file(gearmand, driver_factory, tmp_path: Path) -> None:
    logfile = tmp_path / "gd.log"
    driver = driver_factory(gearmand, {**PAIR, "logfile": str(logfile)})
    assert driver.wait_registered("beta.opts", 1)
    rotated = tmp_path / "gd.log.1"
    logfile.rename(rotated)
    driver.signal(signal.SIGUSR1)
    assert wait_for(lambda: logfile.exists() and "log file reopened" in logfile.read_text(), 5)
    assert "started process" in rotated.read_text()


def test_journal_lines_carry_syslog_priorities(gearmand, driver_factory,
                                               tmp_path: Path) -> None:
    log_path = tmp_path / "journal.log"
    # stderr will be this file: tell the driver it is "the journal". No journald listens here
    # (as in CI), so this is the fallback; the native protocol is tested in tests/system.
    log_path.touch()
    info = os.stat(log_path)
    driver = driver_factory(gearmand, {**PAIR, "interval": 0}, name="journal",
                            env={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    assert driver.wait_registered("beta.opts", 1)
    with TestClient(gearmand) as client:
        client.submit("alpha.work", b"not-a-number")  # fails: an ERROR with a traceback
    assert wait_for(lambda: "ValueError" in driver.log(), 5)
    lines = [line for line in driver.log().splitlines() if line]
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines[:5]
    assert any(line.startswith("<6>INFO started process") for line in lines)
    assert any(line.startswith("<3>") and "Traceback" in line for line in lines)
    assert not any(line[3:4] == "[" for line in lines)  # no second time stamp


def test_daemonize_with_a_locked_pidfile(gearmand, tmp_path: Path) -> None:
    pidfile = tmp_path / "gd.pid"
    config = tmp_path / "d.yml"
    config.write_text(json.dumps({**_base_for(gearmand), "logfile": str(tmp_path / "d.log")}))
    first = run_cli("--configfile", str(config), "--daemonize", "--pidfile", str(pidfile))
    assert first.returncode == 0, first.stderr
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), 10)
    pid = int(pidfile.read_text())
    try:
        assert alive(pid)
        second = run_cli("--configfile", str(config), "--daemonize", "--pidfile", str(pidfile))
        assert second.returncode == 75
        assert second.stderr.strip() == (f"gearman-driver: {pidfile}: another gearman-driver "
                                         f"is running (pid {pid})")
    finally:
        os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not alive(pid), 15)
    assert not pidfile.exists()


def _base_for(port: int) -> dict[str, Any]:
    return {"server": f"127.0.0.1:{port}", "console_port": 0, "interval": 1,
            "namespaces": ["tw.pair"], "lib": [str(Path(__file__).parent.parent / "fixtures")]}


CODE_V1 = '''
from gearman_driver import Worker, job


class Versioned(Worker):
    prefix = "v."

    @job
    def which(self, job, workload):
        return "v1"
'''


def test_reload_after_a_code_change_reexecs_the_master_gracefully(gearmand, driver_factory,
                                                                  notify, tmp_path: Path) -> None:
    package = tmp_path / "code" / "vpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    module = package / "mod.py"
    module.write_text(CODE_V1)
    driver = driver_factory(gearmand, {"namespaces": ["vpkg"], "lib": [str(tmp_path / "code")],
                                       "interval": 1}, env={"NOTIFY_SOCKET": str(notify.path)})
    assert notify.wait_keys(["READY"])
    old_children = driver.children()
    with TestClient(gearmand) as client:
        assert client.submit("v.which", b"").result == b"v1"
    module.write_text(CODE_V1.replace('"v1"', '"v2"'))
    os.utime(module, (time.time() + 5, time.time() + 5))  # a different mtime, even within 1 s
    driver.signal(signal.SIGHUP)
    assert notify.wait_keys(["READY", "RELOADING", "READY"], timeout=20)
    with TestClient(gearmand) as client:
        assert wait_for(lambda: client.submit("v.which", b"").result == b"v2", 10)
    assert driver.proc is not None and driver.proc.poll() is None  # the same pid, re-executed
    assert not set(old_children) & set(driver.children())
    assert "re-executing" in driver.log()
