"""The operator's journey under a real systemd: a booted Debian bookworm with systemd as PID 1,
the .deb built from this checkout, gearmand from Debian, and only systemctl, journalctl,
gearadmin, the gearman client and an editor's changes to /etc/gearman-driver/config.yml.

The steps run in order on one container (the README's "Debian package and systemd" section
walks the same way); each is one test, so a failure names the step.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.gearmand_util import wait_for
from tests.system.container import Container

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(600)]

UNIT = "gearman-driver"
CONFIG = "/etc/gearman-driver/config.yml"
SOCKET = "/run/gearman-driver/console.sock"
TEXT = "examples.workers.text.Text"
SHIPPED_FUNCTIONS = {f"{TEXT}.upper", f"{TEXT}.reverse", f"{TEXT}.word_count", "maths.add",
                     "maths.multiply"}
STEPS = "journeyjobs.workers.Steps"
# Test workers of the journey's own: a job of a few seconds (step 8), one that logs and fails,
# one that overruns its timeout once and one that logs a line too big for a datagram (journal
# fields). Installed in /opt/journey, named in
# the config's namespaces/lib.
JOURNEY_WORKERS = '''\
import logging
import os
import time

from gearman_driver import Worker, job

log = logging.getLogger("journeyjobs")


class Steps(Worker):
    @job(min_processes=3, max_processes=3)
    def nap(self, job, workload):
        time.sleep(float(workload))
        return b"rested " + workload

    @job
    def noisy(self, job, workload):
        log.warning("noisy got %s", workload.decode())
        raise RuntimeError("noisy failed on " + workload.decode())

    @job(timeout=1)
    def stuck(self, job, workload):
        log.info("stuck on %s", workload.decode())
        marker = "/tmp/stuck-" + workload.decode()
        if not os.path.exists(marker):  # the first try overruns; gearmand hands the job on
            open(marker, "w").close()
            time.sleep(60)
        return b"unstuck"

    @job
    def shout(self, job, workload):
        log.warning("shout %s", "x" * int(workload))
        return b"shouted"
'''


# -- what an operator types, as functions ---------------------------------------------------
def systemctl(box: Container, *args: str) -> subprocess.CompletedProcess[str]:
    return box.run(["systemctl", *args], check=False, timeout=120)


def prop(box: Container, name: str) -> str:
    return box.show(f"{UNIT}.service", name)


def workers(box: Container) -> list[tuple[str, list[str]]]:
    """`gearadmin --workers`: (client id, functions) of every registered worker."""
    rows = []
    for line in box.run(["gearadmin", "--workers"]).stdout.splitlines():
        if " : " in line:
            left, functions = line.split(" : ", 1)
            if functions.split():
                rows.append((left.split()[-1], functions.split()))
    return rows


def registered(box: Container) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, functions in workers(box):
        for function in functions:
            counts[function] = counts.get(function, 0) + 1
    return counts


def masters_at_gearmand(box: Container) -> set[int]:
    """The master pids in our workers' client ids (`<host>:<pid>:<master pid>:<job>`)."""
    return {int(client_id.split(":")[2]) for client_id, _ in workers(box)
            if client_id.count(":") >= 3}


def console(box: Container, command: str) -> list[str]:
    return box.run(["gearman-driver-console", "--socket", SOCKET, command]).stdout.splitlines()


def max_processes(box: Container, job: str) -> int:
    return next(int(line.split()[2]) for line in console(box, "status")
                if line.split()[0] == job)


def submit(box: Container, function: str, data: str) -> subprocess.CompletedProcess[str]:
    """The `gearman` client: the job's result on stdout, without a newline."""
    return box.run(["gearman", "-f", function, data], check=False, timeout=60)


def edit_config(box: Container, change: Callable[[str], str]) -> None:
    path = box.path(CONFIG)
    path.write_text(change(path.read_text()))


def processes_of_master(box: Container, master: int) -> list[int]:
    children = box.run(["cat", f"/proc/{master}/task/{master}/children"], check=False)
    return [int(pid) for pid in children.stdout.split()]


def alive(box: Container, pid: int) -> bool:
    return box.run(["test", "-d", f"/proc/{pid}"], check=False).returncode == 0


def journal(box: Container, *args: str) -> list[dict[str, str]]:
    """`journalctl -u gearman-driver -o json`; values as text (journalctl gives a field that
    is not printable UTF-8 as a list of bytes)."""
    out = box.run(["journalctl", "-u", UNIT, "-o", "json", "--all", "--no-pager", *args]).stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [{key: bytes(value).decode("utf-8", "replace") if isinstance(value, list)
             else str(value) for key, value in entry.items()} for entry in entries]


def main_pid(box: Container) -> int:
    return int(prop(box, "MainPID"))


# -- the journey ------------------------------------------------------------------------------
def test_1_install_pulls_its_dependencies_and_starts_only_once_registered(
        container: Container, deb: Path) -> None:
    box = container
    relations = box.run(["dpkg-deb", "-f", f"/root/{deb.name}", "Depends"]).stdout
    depends = [re.split(r"[\s(:]", item.strip())[0] for item in relations.split(",")]
    missing = box.run(["dpkg-query", "-W", *depends], check=False)
    assert missing.returncode != 0, "the minimal system already had every dependency"
    box.run(["sh", "-c", f"cd /root && apt-get install -y ./{deb.name}"], timeout=300)
    state = box.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\n", *depends]).stdout
    assert state.split("\n")[:len(depends)] == ["ii "] * len(depends), state
    assert systemctl(box, "is-enabled", UNIT).stdout.strip() == "enabled"

    assert systemctl(box, "stop", UNIT).returncode == 0
    assert wait_for(lambda: registered(box) == {}, 10)
    assert systemctl(box, "start", UNIT).returncode == 0
    at_start = registered(box)  # the moment systemd reports the service started
    assert at_start == {function: 1 for function in SHIPPED_FUNCTIONS}, at_start
    assert masters_at_gearmand(box) == {main_pid(box)}
    status = systemctl(box, "status", UNIT, "--no-pager").stdout
    assert "Active: active (running)" in status
    assert re.search(r"Status: \"4 processes \(0 busy\) in 4 jobs", status), status


def test_1b_the_unit_is_hardened(container: Container) -> None:
    report = container.run(["systemd-analyze", "security", f"{UNIT}.service", "--no-pager"],
                           check=False).stdout
    found = re.search(rf"Overall exposure level for {UNIT}\.service: ([0-9.]+) (\w+)", report)
    assert found, report
    print(f"\nsystemd-analyze security: {found.group(1)} {found.group(2)}")
    assert float(found.group(1)) <= 2.0 and found.group(2) == "OK", report


def test_2_jobs_from_a_client_complete(container: Container) -> None:
    assert submit(container, f"{TEXT}.upper", "hello").stdout == "HELLO"
    assert submit(container, f"{TEXT}.reverse", "abc").stdout == "cba"
    assert submit(container, "maths.add", "2 3 4").stdout == "9"
    assert json.loads(submit(container, f"{TEXT}.word_count", "a b c").stdout) == {"words": 3}


def test_2b_root_controls_the_daemon_over_the_tcp_console_too(container: Container) -> None:
    # The unit hides /proc's system files (ProcSubset=pid); the TCP peer's uid must still be
    # found, or root would be a stranger on the TCP console (the same limit: nothing changes).
    reply = container.run(["gearman-driver-console", "--server", "127.0.0.1:47300",
                           f"set_max_processes {TEXT}.word_count 8"], check=False)
    assert (reply.returncode, reply.stdout.split()) == (0, ["OK"]), reply
    nobody = container.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            "gearman-driver-console", "--server", "127.0.0.1:47300",
                            f"set_max_processes {TEXT}.word_count 8"], check=False)
    assert nobody.returncode == 1 and "ERR permission_denied" in nobody.stdout, nobody


def test_3_reload_applies_a_new_limit_and_loses_no_job(container: Container) -> None:
    box = container
    assert max_processes(box, f"{TEXT}.word_count") == 8
    # one job after the other, from before the reload until well after it
    loop = ('i=0; while [ ! -e /root/step3.stop ]; do i=$((i+1)); '
            f'r=$(gearman -f {TEXT}.upper "job$i" 2>&1); '
            f'if [ "$r" = "JOB$i" ]; then echo "ok $i"; else echo "lost $i: $r"; fi; '
            'done > /root/step3.out')
    client = box.start(["sh", "-c", loop])
    out = box.path("/root/step3.out")

    def done() -> int:
        return out.read_text().count("\n") if out.exists() else 0

    try:
        assert wait_for(lambda: done() >= 30, 60)
        edit_config(box, lambda text: text + (
            f"\njob_runtime_attributes:\n  {TEXT}.word_count:\n    max_processes: 3\n"))
        reload = systemctl(box, "reload", UNIT)
        assert reload.returncode == 0, reload.stderr
        assert max_processes(box, f"{TEXT}.word_count") == 3
        after = done()
        assert wait_for(lambda: done() >= after + 30, 60)
    finally:
        box.path("/root/step3.stop").touch()
        client.wait(120)
    results = out.read_text().splitlines()
    assert results == [f"ok {i}" for i in range(1, len(results) + 1)], [
        line for line in results if not line.startswith("ok")][:5]


def test_4_a_refused_reload_fails_and_the_old_config_keeps_serving(
        container: Container) -> None:
    box = container
    good = box.path(CONFIG).read_text()
    edit_config(box, lambda text: text.replace("interval: 1", "interval: fast"))
    line = next(n for n, text in enumerate(good.splitlines(), 1) if text == "interval: 1")
    where = f"{CONFIG}:{line}:"
    try:
        reload = systemctl(box, "reload", UNIT)
        assert reload.returncode != 0
        assert wait_for(lambda: f"reload failed: {where}" in prop(box, "StatusText"), 10)
        status = systemctl(box, "status", UNIT, "--no-pager", "-n", "20").stdout
        assert f"Status: \"reload failed: {where}" in status, status
        assert "ExecReload=/usr/bin/gearman-driver reload" in status
        messages = [entry["MESSAGE"] for entry in journal(box)]
        daemon = [m for m in messages if f"reload failed: {where}" in m and "interval" in m]
        assert len(daemon) >= 2, messages[-10:]  # the daemon's error and ExecReload's stderr
        assert prop(box, "ActiveState") == "active"
        assert max_processes(box, f"{TEXT}.word_count") == 3  # the old configuration
        assert submit(box, f"{TEXT}.upper", "still").stdout == "STILL"
    finally:
        box.path(CONFIG).write_text(good)
    assert systemctl(box, "reload", UNIT).returncode == 0
    assert wait_for(lambda: not prop(box, "StatusText").startswith("reload failed"), 10)


def test_5_journal_priority_filter_shows_only_warnings_and_errors(
        container: Container) -> None:
    everything = journal(container)
    assert any(entry["PRIORITY"] == "6" and "configuration reloaded" in entry["MESSAGE"]
               for entry in everything)
    serious = journal(container, "-p", "warning")
    assert serious and all(int(entry["PRIORITY"]) <= 4 for entry in serious)
    messages = [entry["MESSAGE"] for entry in serious]
    assert any(m.startswith("ERROR reload failed:") for m in messages), messages
    assert not any(m.startswith("INFO ") for m in messages), messages


def test_5b_journal_fields_name_the_job_and_keep_a_traceback_whole(
        container: Container) -> None:
    box = container
    box.path("/opt/journey/journeyjobs").mkdir(parents=True)
    box.path("/opt/journey/journeyjobs/__init__.py").write_text("")
    box.path("/opt/journey/journeyjobs/workers.py").write_text(JOURNEY_WORKERS)
    edit_config(box, lambda text: text.replace(
        "  - examples.workers\n", "  - examples.workers\n  - journeyjobs\n").replace(
        "  - /usr/share/gearman-driver\n", "  - /usr/share/gearman-driver\n  - /opt/journey\n"))
    assert systemctl(box, "restart", UNIT).returncode == 0
    master = main_pid(box)
    submit(box, f"{STEPS}.noisy", "n1")  # the job fails
    noisy = f"{STEPS}.noisy"

    def entries() -> list[dict[str, str]]:
        return journal(box, f"JOB={noisy}")

    assert wait_for(lambda: any("Traceback" in e["MESSAGE"] for e in entries()), 10)
    lines = entries()
    assert {e["JOB"] for e in lines} == {noisy}
    workers = {e["_PID"] for e in lines} - {str(master)}
    assert len(workers) == 1
    of_worker = [e for e in journal(box) if e.get("_PID") in workers]
    assert of_worker and all(e.get("JOB") == noisy for e in of_worker)  # every line of it
    about = [e["MESSAGE"] for e in lines if e["_PID"] == str(master)]
    assert about and all(noisy in m for m in about)  # and the master's lines about it
    warning = next(e for e in lines if "noisy got n1" in e["MESSAGE"])
    failure = next(e for e in lines if "Traceback" in e["MESSAGE"])
    assert warning["PRIORITY"] == "4" and failure["PRIORITY"] == "3"
    assert failure["MESSAGE"].rstrip().endswith("RuntimeError: noisy failed on n1")
    assert failure["GEARMAN_FUNCTION"] == warning["GEARMAN_FUNCTION"] == noisy
    assert failure["GEARMAN_HANDLE"].startswith("H:")
    assert failure["GEARMAN_HANDLE"] == warning["GEARMAN_HANDLE"]
    assert not [e for e in journal(box) if "RuntimeError" in e["MESSAGE"]
                and "Traceback" not in e["MESSAGE"]]  # one entry, not one per line
    other = journal(box, f"JOB={TEXT}.upper")
    assert other and all(e["JOB"] == f"{TEXT}.upper" for e in other)

    stuck = f"{STEPS}.stuck"
    assert submit(box, stuck, "s1").stdout == "unstuck"  # killed once for its timeout
    assert wait_for(lambda: sum("stuck on s1" in e["MESSAGE"]
                                for e in journal(box, f"JOB={stuck}")) == 2, 10)
    lines = journal(box, f"JOB={stuck}")
    timeout = next(e for e in lines if "over its timeout" in e["MESSAGE"])
    assert timeout["_PID"] == str(master) and timeout["PRIORITY"] == "3"
    assert timeout["GEARMAN_FUNCTION"] == stuck
    tries = [e for e in lines if "stuck on s1" in e["MESSAGE"]]
    assert len(tries) == 2 and tries[0]["GEARMAN_HANDLE"] == timeout["GEARMAN_HANDLE"]
    assert journal(box, f"GEARMAN_HANDLE={timeout['GEARMAN_HANDLE']}")[0] == tries[0]

    shout = f"{STEPS}.shout"  # 300 kB: more than a datagram takes, sent in a sealed memfd
    assert submit(box, shout, "300000").stdout == "shouted"
    assert wait_for(lambda: [e for e in journal(box, f"JOB={shout}")
                             if e["MESSAGE"].endswith("shout " + "x" * 300000)], 10)


def _watchdog_dropin(box: Container, text: str | None) -> None:
    path = box.path("/etc/systemd/system/gearman-driver.service.d/watchdog.conf")
    if text is None:
        path.unlink()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    box.run(["systemctl", "daemon-reload"])


def test_6_a_frozen_master_is_killed_by_the_watchdog_and_restarted(
        container: Container) -> None:
    box = container
    # the shipped WatchdogSec=30 (+ TimeoutAbortSec) would make this step take over a minute
    _watchdog_dropin(box, "[Service]\nWatchdogSec=4\nTimeoutAbortSec=4\n")
    assert systemctl(box, "restart", UNIT).returncode == 0
    master, restarts = main_pid(box), int(prop(box, "NRestarts"))
    children = processes_of_master(box, master)
    assert len(children) == 10  # 4 shipped jobs, nap's 3, noisy's, stuck's and shout's
    box.run(["sh", "-c", f"kill -STOP {master}"])

    def restarted() -> bool:
        return int(prop(box, "NRestarts")) == restarts + 1 and \
            prop(box, "ActiveState") == "active" and main_pid(box) not in (0, master)

    assert wait_for(restarted, 60, interval=0.5)
    assert not [pid for pid in [master, *children] if alive(box, pid)]
    messages = [e["MESSAGE"] for e in journal(box)]
    assert any("Watchdog timeout" in m for m in messages), messages[-20:]
    assert wait_for(lambda: masters_at_gearmand(box) == {main_pid(box)}, 20)


def test_7_after_kill_9_the_master_is_restarted_without_duplicate_workers(
        container: Container) -> None:
    box = container
    master, restarts = main_pid(box), int(prop(box, "NRestarts"))
    children = processes_of_master(box, master)
    box.run(["sh", "-c", f"kill -9 {master}"])

    def restarted() -> bool:
        return int(prop(box, "NRestarts")) == restarts + 1 and \
            prop(box, "ActiveState") == "active" and main_pid(box) not in (0, master)

    assert wait_for(restarted, 60, interval=0.5)
    assert wait_for(lambda: not [pid for pid in children if alive(box, pid)], 20)
    expected = {function: 1 for function in
                SHIPPED_FUNCTIONS | {f"{STEPS}.noisy", f"{STEPS}.stuck", f"{STEPS}.shout"}}
    expected[f"{STEPS}.nap"] = 3
    assert wait_for(lambda: registered(box) == expected, 20), registered(box)
    assert masters_at_gearmand(box) == {main_pid(box)}
    _watchdog_dropin(box, None)


def test_8_stop_lets_every_job_in_hand_complete(container: Container) -> None:
    box = container
    clients = [box.start(["gearman", "-f", f"{STEPS}.nap", "3"]) for _ in range(3)]
    try:
        def running() -> int:
            for line in box.run(["gearadmin", "--status"]).stdout.splitlines():
                fields = line.split("\t")
                if fields[0] == f"{STEPS}.nap":
                    return int(fields[2])
            return 0

        assert wait_for(lambda: running() == 3, 20)
        assert systemctl(box, "stop", UNIT).returncode == 0
    finally:
        results = [client.communicate(timeout=60) for client in clients]
    assert [out for out, _ in results] == ["rested 3"] * 3, results
    assert prop(box, "ActiveState") == "inactive"
    assert prop(box, "Result") == "success"


def test_9_the_enabled_service_runs_after_a_reboot(container: Container) -> None:
    box = container
    box.poweroff()
    box.boot()
    assert systemctl(box, "is-active", UNIT).stdout.strip() == "active"
    assert wait_for(lambda: set(registered(box)) >= SHIPPED_FUNCTIONS, 20)
    assert submit(box, f"{TEXT}.upper", "again").stdout == "AGAIN"


def test_10_purge_removes_service_user_config_and_logs(container: Container) -> None:
    box = container
    box.run(["apt-get", "purge", "-y", UNIT], timeout=300)
    assert prop(box, "LoadState") == "not-found"
    assert box.run(["getent", "passwd", UNIT], check=False).returncode != 0
    assert box.run(["getent", "group", UNIT], check=False).returncode != 0
    for path in ("/etc/gearman-driver", "/var/log/gearman-driver", "/usr/lib/gearman-driver",
                 "/run/gearman-driver"):
        assert not box.path(path).exists(), path
    left = box.run(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"], check=False).stdout
    assert "gearman-driver" not in left
    assert wait_for(lambda: registered(box) == {}, 10)
