"""The foundation, end to end: the real daemon, real children, a real gearmand."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.driver_util import alive, children_of, run_cli
from tests.gearmand_util import (
    TestClient,
    running,
    start_gearmand,
    stop_gearmand,
    submit_in_thread,
    wait_for,
)

BASIC = {"namespaces": ["tw.basic"]}


@pytest.fixture(params=["native", "pygearman"])
def worker_backend(request: pytest.FixtureRequest) -> str:
    """Everything the foundation promises holds for both worker backends."""
    return str(request.param)


def pid_of(driver, function: str) -> int:
    """The pid in the client id of the (single) worker registered for `function`."""
    ids = [cid for cid, fns in driver.workers() if function in fns]
    assert len(ids) == 1, ids
    return int(ids[0].split(":")[1])


def test_foreground_and_background_jobs_return_correct_results(gearmand, driver_factory,
                                                               tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    driver = driver_factory(gearmand, {**BASIC, "worker_options": {
        "GLOBAL": {"record_file": str(record)}}})
    assert driver.wait_registered("t.echo", 1)
    assert driver.wait_registered("t.record", 1)
    with TestClient(gearmand) as client:
        outcome = client.submit("t.echo", b"hello \x00 world")
        assert (outcome.final, outcome.result) == ("complete", b"hello \x00 world")
        coded = client.submit("t.coded", b"  spaced  ")
        assert coded.final == "complete"
        assert json.loads(coded.result) == {"got": "spaced"}
        assert coded.of("status") == [(b"1", b"2")]
        for i in range(20):
            client.submit_bg("t.record", f"bg-{i}".encode())
    assert wait_for(lambda: record.exists() and len(record.read_text().split()) == 20, 10)
    assert sorted(record.read_text().split()) == sorted(f"bg-{i}" for i in range(20))


def test_process_group_serves_its_functions_from_min_processes(gearmand,
                                                                driver_factory) -> None:
    driver = driver_factory(gearmand, BASIC)
    assert driver.wait_registered("t.grp_a", 2)
    group = [(cid, fns) for cid, fns in driver.workers() if "t.grp_a" in fns]
    assert len(group) == 2
    for client_id, functions in group:
        assert sorted(functions) == ["t.grp_a", "t.grp_b"]
        host, pid, master, job_name = client_id.split(":")
        assert (master, job_name) == (str(driver.pid), "t.grp")
        assert int(pid) in driver.children()
    pids = {int(cid.split(":")[1]) for cid, _ in group}
    with TestClient(gearmand) as client:
        served = {client.submit("t.grp_a", b"").result[1:].decode() for _ in range(6)}
        served |= {client.submit("t.grp_b", b"").result[1:].decode() for _ in range(6)}
    assert {int(p) for p in served} <= pids


def test_worker_options_merge_global_and_runtime_attributes_override(gearmand,
                                                                      driver_factory) -> None:
    driver = driver_factory(gearmand, {
        **BASIC,
        "worker_options": {"GLOBAL": {"greeting": "global", "colour": "blue", "size": 1},
                           "tw.basic.jobs.Basic": {"greeting": "own", "size": 2}},
        "job_runtime_attributes": {"t.echo": {"min_processes": 3, "max_processes": 5},
                                   "t.grp": {"min_processes": 1, "max_processes": 1}},
    })
    assert driver.wait_registered("t.echo", 3)
    assert driver.wait_registered("t.grp_a", 1)
    with TestClient(gearmand) as client:
        seen = json.loads(client.submit("t.show_options", b"").result)
    assert seen["greeting"] == "own"
    assert seen["options"] == {"colour": "blue", "size": 2}
    assert seen["server"] == f"127.0.0.1:{gearmand}"


def test_raising_and_int_returning_jobs_leave_the_process_alive(gearmand,
                                                                 driver_factory) -> None:
    driver = driver_factory(gearmand, BASIC)
    assert driver.wait_registered("t.boom", 1) and driver.wait_registered("t.number", 1)
    boom_pid, number_pid = pid_of(driver, "t.boom"), pid_of(driver, "t.number")
    with TestClient(gearmand) as client:
        for _ in range(3):
            assert client.submit("t.boom", b"x").final == "fail"
            assert client.submit("t.number", b"").final == "fail"
        assert client.submit("t.echo", b"still fine").result == b"still fine"
    assert pid_of(driver, "t.boom") == boom_pid and alive(boom_pid)
    assert pid_of(driver, "t.number") == number_pid and alive(number_pid)
    log = driver.log()
    assert "RuntimeError: boom: x" in log
    assert "t.number returned int" in log


def test_a_job_that_exits_gets_its_process_replaced(gearmand, driver_factory,
                                                    tmp_path: Path) -> None:
    driver = driver_factory(gearmand, BASIC)
    assert driver.wait_registered("t.die", 1)
    first = pid_of(driver, "t.die")
    with TestClient(gearmand) as client:
        # the first try kills its process; gearmand re-queues the job for the replacement
        outcome = client.submit("t.die", str(tmp_path / "marker").encode())
    assert outcome.final == "complete"
    second = int(outcome.result.split()[-1])
    assert second != first
    assert not alive(first)
    assert driver.wait_registered("t.die", 1)


def test_import_and_constructor_failures_exit_78_with_one_line(tmp_path: Path,
                                                               gearmand) -> None:
    lib = str(Path(__file__).parent.parent / "fixtures")
    for namespace, expected in (("tw.broken_import", "this_module_does_not_exist"),
                                ("tw.broken_ctor", "tw.broken_ctor.ctor.Picky")):
        config = tmp_path / f"{namespace}.yml"
        config.write_text(json.dumps({"namespaces": [namespace], "lib": [lib],
                                      "server": f"127.0.0.1:{gearmand}",
                                      "worker_options": {"GLOBAL": {"colour": "red"}}}))
        for extra in ((), ("--check-config",)):
            result = run_cli("--configfile", str(config), *extra)
            assert result.returncode == 78, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert expected in lines[0]
            assert "Traceback" not in result.stderr
    ctor = run_cli("--configfile", str(tmp_path / "tw.broken_ctor.yml"))
    assert "colour" in ctor.stderr


def test_check_config_prints_the_job_table(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text(json.dumps({"namespaces": ["tw.basic"],
                                  "lib": [str(Path(__file__).parent.parent / "fixtures")]}))
    result = run_cli("--configfile", str(config), "--check-config")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["t.grp"] == ["t.grp", "t.grp_a,t.grp_b", "2", "2", "tw.basic.jobs.Basic"]
    assert rows["t.sleep"][2:4] == ["1", "4"]


def test_check_config_imports_only_the_wanted_modules(tmp_path: Path) -> None:
    lib = str(Path(__file__).parent.parent / "fixtures")
    config = tmp_path / "c.yml"
    for wanted, status in ((None, 78), ("tw.wanted_filter:only_workers", 0),
                           ("tw.wanted_filter:missing", 78)):
        config.write_text(json.dumps({"namespaces": ["tw.wanted"], "lib": [lib],
                                      "wanted": wanted}))
        result = run_cli("--configfile", str(config), "--check-config")
        assert result.returncode == status, result.stderr
        if status == 0:
            rows = [line.split() for line in result.stdout.splitlines()[1:]]
            assert rows == [["w.scale", "w.scale", "1", "1",
                             "tw.wanted.worker_scale.ScaleImage"]]
        else:
            (line,) = result.stderr.strip().splitlines()
            assert ("tw.wanted.web.controller" if wanted is None else "wanted:") in line


def test_sigterm_during_a_job_lets_it_complete_then_exits_0(gearmand, driver_factory) -> None:
    driver = driver_factory(gearmand, BASIC)
    assert driver.wait_registered("t.sleep", 1)
    thread, results = submit_in_thread(gearmand, "t.sleep", b"2")
    assert wait_for(lambda: running(gearmand, "t.sleep") == 1, 5)
    children = driver.children()
    driver.signal(signal.SIGTERM)
    assert driver.wait_exit(15) == 0
    thread.join(10)
    assert len(results) == 1
    outcome = results[0]
    assert outcome.final == "complete" and outcome.result == b"slept 2"
    assert not any(alive(pid) for pid in children)


def test_workers_register_again_after_gearmand_restarts(tmp_path: Path,
                                                        driver_factory) -> None:
    proc, port = start_gearmand(tmp_path / "g1")
    try:
        driver = driver_factory(port, BASIC)
        assert driver.wait_registered("t.echo", 1)
        stop_gearmand(proc)  # reaped: its sockets are closed, the workers' connections dead
        proc, port = start_gearmand(tmp_path / "g2", port=port)
        assert driver.wait_registered("t.echo", 1, timeout=10)
        with TestClient(port) as client:
            assert client.submit("t.echo", b"back").result == b"back"
        assert driver.proc is not None and driver.proc.poll() is None
    finally:
        stop_gearmand(proc)


def test_no_child_survives_kill_9_of_the_master(gearmand, driver_factory) -> None:
    driver = driver_factory(gearmand, BASIC)
    assert driver.wait_registered("t.grp_a", 2)
    assert wait_for(lambda: len(children_of(driver.pid)) == 11, 10)  # 10 jobs, t.grp has 2
    children = children_of(driver.pid)
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait_exit(5) == -signal.SIGKILL
    assert wait_for(lambda: not any(alive(pid) for pid in children), 3.0)
