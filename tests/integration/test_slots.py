"""Jobs of several slots against a real gearmand (issue 24): async and threaded jobs in flight
at once in one process, each keeping its own fate, scaled and stopped by slots."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.driver_util import DriverProcess, run_cli
from tests.gearmand_util import (
    JobOutcome,
    TestClient,
    free_port,
    running,
    status_table,
    wait_for,
    waiting,
)

SLOTS = {"namespaces": ["tw.slots"], "interval": 1}


def off(*keep: str) -> dict[str, Any]:
    """job_runtime_attributes switching off every job of tw.slots but `keep`."""
    jobs = ["sl.aio", "sl.threads", "sl.scale", "sl.single"]
    return {name: {"min_processes": 0, "max_processes": 0} for name in jobs if name not in keep}


def drained(port: int, function: str) -> bool:
    return status_table(port).get(function, (0, 0, 0))[0] == 0


def ask(port: int, function: str, payload: bytes = b"") -> JobOutcome:
    with TestClient(port, timeout=60) as client:
        return client.submit(function, payload)


def submit_all(port: int, function: str, payloads: list[bytes]) -> list[JobOutcome]:
    """Foreground jobs from one thread each; their outcomes in order."""
    outcomes: list[JobOutcome | None] = [None] * len(payloads)

    def one(i: int) -> None:
        outcomes[i] = ask(port, function, payloads[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


def test_an_async_job_holds_its_concurrency_in_one_process_and_no_more(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver = driver_factory(gearmand, {**SLOTS, "job_runtime_attributes": off("sl.aio")})
    assert driver.wait_registered("sl.wait", 1)
    pid = driver.children()[0]
    with TestClient(gearmand) as client:
        client.submit_many_bg("sl.wait", [b"1"] * 100)
    # the first 50 are in flight; the other 50 stay queued in gearmand, not grabbed ahead
    assert wait_for(lambda: running(gearmand, "sl.wait") == 50, 10)
    assert waiting(gearmand, "sl.wait") == 50
    assert wait_for(lambda: drained(gearmand, "sl.wait"), 30)
    assert ask(gearmand, "sl.peak", b"async").result == b"50"
    assert driver.children() == [pid]  # one process held them all


def test_waiting_jobs_survive_a_garbage_collection(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    """The event loop refers to tasks only weakly: a collection while 49 jobs wait must not
    destroy them ("Task was destroyed but it is pending")."""
    driver = driver_factory(gearmand, {**SLOTS, "job_runtime_attributes": off("sl.aio")})
    assert driver.wait_registered("sl.wait", 1)
    outcomes = submit_all(gearmand, "sl.wait", [b"1"] * 49 + [b"gc"])
    assert [o.final for o in outcomes] == ["complete"] * 50
    assert outcomes[-1].result == b"collected"
    assert "Task was destroyed" not in driver.log()


def test_blocking_jobs_run_on_as_many_threads_as_slots(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver = driver_factory(gearmand, {**SLOTS, "job_runtime_attributes": off("sl.threads")})
    assert driver.wait_registered("sl.block", 1)
    with TestClient(gearmand) as client:
        client.submit_many_bg("sl.block", [b"0.5"] * 40)
    assert wait_for(lambda: running(gearmand, "sl.block") == 20, 10)
    assert wait_for(lambda: drained(gearmand, "sl.block"), 30)
    assert ask(gearmand, "sl.thread_peak").result == b"20"


def test_each_job_keeps_its_own_fate(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver = driver_factory(gearmand, {**SLOTS, "job_runtime_attributes": off("sl.aio",
                                                                              "sl.threads")})
    assert driver.wait_registered("sl.wait", 1) and driver.wait_registered("sl.block", 1)
    pids = sorted(driver.children())
    for function in ("sl.wait", "sl.block"):
        outcomes = submit_all(gearmand, function, [b"0.3"] * 5 + [b"fail"] + [b"0.3"] * 5)
        assert [o.final for o in outcomes] == ["complete"] * 5 + ["fail"] + ["complete"] * 5
    assert sorted(driver.children()) == pids  # both processes went on
    assert "ValueError: asked to fail" in driver.log()


def test_progress_packets_reach_the_client(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver = driver_factory(gearmand, {**SLOTS, "job_runtime_attributes": off("sl.aio")})
    assert driver.wait_registered("sl.wait", 1)
    outcome = ask(gearmand, "sl.wait", b"0")
    assert outcome.final == "complete" and outcome.of("status") == [(b"1", b"2")]


def test_an_async_job_over_its_timeout_is_cancelled_and_fails_alone(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    attrs = off("sl.aio")
    attrs["sl.aio"] = {"timeout": 1}
    driver = driver_factory(gearmand, {**SLOTS, "job_runtime_attributes": attrs})
    assert driver.wait_registered("sl.wait", 1)
    pid = driver.children()[0]
    outcomes = submit_all(gearmand, "sl.wait", [b"hang", b"0.2", b"0.2", b"0.2"])
    assert [o.final for o in outcomes] == ["fail", "complete", "complete", "complete"]
    assert "timed out after 1s" in driver.log()
    assert driver.children() == [pid]  # a cancelled task costs the process nothing
    assert ask(gearmand, "sl.wait", b"0").final == "complete"


def test_a_thread_over_its_timeout_fails_and_its_process_is_replaced(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    attrs = off("sl.threads")
    attrs["sl.threads"] = {"timeout": 1}
    driver = driver_factory(gearmand, {**SLOTS, "job_runtime_attributes": attrs})
    assert driver.wait_registered("sl.block", 1)
    pid = driver.children()[0]
    # one job sleeps far past the timeout; the others finish well within it
    outcomes = submit_all(gearmand, "sl.block", [b"30", b"0.3", b"0.3"])
    assert [o.final for o in outcomes] == ["fail", "complete", "complete"]
    assert wait_for(lambda: pid not in driver.children(), 15)  # it exits, thread and all
    assert driver.wait_registered("sl.block", 1)  # and is replaced
    assert ask(gearmand, "sl.block", b"0").final == "complete"


def test_sigterm_with_30_jobs_in_flight_completes_all_30(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver = driver_factory(gearmand, {**SLOTS, "job_runtime_attributes": off("sl.aio")})
    assert driver.wait_registered("sl.wait", 1)
    results: list[list[JobOutcome]] = []
    sender = threading.Thread(target=lambda: results.append(
        submit_all(gearmand, "sl.wait", [b"2"] * 30)))
    sender.start()
    assert wait_for(lambda: running(gearmand, "sl.wait") == 30, 10)
    driver.signal(signal.SIGTERM)
    sender.join(60)
    assert results and [o.final for o in results[0]] == ["complete"] * 30
    assert driver.wait_exit(30) == 0


def test_recycling_a_process_of_slots_finishes_every_job_in_hand(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    attrs = off("sl.aio")
    attrs["sl.aio"] = {"max_jobs_per_process": 30}
    driver = driver_factory(gearmand, {**SLOTS, "job_runtime_attributes": attrs})
    assert driver.wait_registered("sl.wait", 1)
    outcomes = submit_all(gearmand, "sl.wait", [b"0.2"] * 100)
    assert [o.final for o in outcomes] == ["complete"] * 100  # none lost to a recycling
    served = {o.result for o in outcomes}
    assert len(served) >= 2, served  # a process took no new job past 30 and was replaced
    assert "recycling after job" in driver.log()


def test_scales_by_slots_up_to_max_and_back(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver = driver_factory(gearmand, {**SLOTS, "max_idle_time": 1,
                                       "job_runtime_attributes": off("sl.scale")})
    assert driver.wait_registered("sl.scale", 1)
    with TestClient(gearmand) as client:
        client.submit_many_bg("sl.scale", [b"0.5"] * 200)
    assert driver.wait_registered("sl.scale", 4, timeout=20)
    assert wait_for(lambda: drained(gearmand, "sl.scale"), 60)
    assert driver.wait_registered("sl.scale", 1, timeout=20)


def test_concurrency_from_the_config_and_a_reload_that_changes_it(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    attrs = off("sl.threads")
    attrs["sl.threads"] = {"concurrency": 5}
    driver = driver_factory(gearmand, {**SLOTS, "job_runtime_attributes": attrs})
    assert driver.wait_registered("sl.block", 1)
    with TestClient(gearmand) as client:
        client.submit_many_bg("sl.block", [b"0.5"] * 20)
    assert wait_for(lambda: running(gearmand, "sl.block") == 5, 10)
    attrs["sl.threads"] = {"concurrency": 10}
    driver.rewrite_config({"job_runtime_attributes": attrs})
    driver.signal(signal.SIGHUP)
    assert wait_for(lambda: drained(gearmand, "sl.block"), 30)  # nothing lost on the way
    assert ask(gearmand, "sl.thread_peak").final == "complete"
    with TestClient(gearmand) as client:
        client.submit_many_bg("sl.block", [b"1"] * 20)
    assert wait_for(lambda: running(gearmand, "sl.block") == 10, 10), driver.log()[-2000:]
    assert wait_for(lambda: drained(gearmand, "sl.block"), 30)


def test_an_async_method_with_one_slot_works(
        gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    driver = driver_factory(gearmand, {**SLOTS, "job_runtime_attributes": off("sl.single")})
    assert driver.wait_registered("sl.single", 1)
    assert ask(gearmand, "sl.single", b"abc").result == b"cba"


def test_slots_on_the_pygearman_backend_is_one_line_naming_the_job(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    lib = str(Path(__file__).parent.parent / "fixtures")
    config.write_text(f'{{"namespaces": ["tw.slots"], "lib": ["{lib}"], '
                      f'"worker_backend": "pygearman"}}')
    result = run_cli("--configfile", str(config), "--check-config")
    assert result.returncode == 78, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(rf"gearman-driver: {re.escape(str(config))}:1:\d+: worker_backend: "
                        r"job sl\.\w+: concurrency \d+ needs the native worker backend, not "
                        r"pygearman", lines[0]), lines[0]


@pytest.fixture
def console_port() -> int:
    return free_port()


def test_the_console_and_the_metrics_count_slots(
        gearmand: int, driver_factory: Callable[..., DriverProcess], console_port: int) -> None:
    from gearman_driver.console.client import query
    from tests.faults.workercode import sample, scrape

    metrics = free_port()
    driver = driver_factory(gearmand, {**SLOTS, "console_port": console_port,
                                       "metrics_port": metrics,
                                       "job_runtime_attributes": off("sl.aio")})
    assert driver.wait_registered("sl.wait", 1)
    with TestClient(gearmand) as client:
        client.submit_many_bg("sl.wait", [b"3"] * 7)
    assert wait_for(lambda: running(gearmand, "sl.wait") == 7, 10)
    rows = {line.split()[0]: line.split()
            for line in query(f"127.0.0.1:{console_port}", "slots")}
    assert rows["sl.aio"] == ["sl.aio", "1", "50", "7"]
    assert rows["sl.threads"] == ["sl.threads", "0", "0", "0"]
    pid = driver.children()[0]
    assert query(f"127.0.0.1:{console_port}", "slots sl.aio") == [f"{pid}  50  7"]
    samples = scrape(metrics)
    assert sample(samples, "gearman_driver_slots", job_name="sl.aio") == 50
    assert sample(samples, "gearman_driver_slots_busy", job_name="sl.aio") == 7
    assert sample(samples, "gearman_driver_processes_busy", job_name="sl.aio") == 1
