"""Memory limits of a worker process: `max_rss_mb` recycles a leaking process after the job
that took it over the limit (it grew without bound before), and `max_workload_mb` fails a job
too large to take instead of dropping the connection, which made gearmand hand it out again
for ever under --job-retries=0."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.faults.faultutil import peak_rss_kb, record_figures
from tests.gearmand_util import TestClient, worker_lines

JOBS = 20
LEAK_MB = 20
LIMIT_MB = 120


@pytest.fixture(params=["native", "pygearman"])
def worker_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.slow
def test_a_leaking_process_is_recycled_at_max_rss_mb(worker_backend: str, gearmand,
                                                     driver_factory) -> None:
    driver = driver_factory(gearmand, {
        "namespaces": ["tw.faults.leak"], "loglevel": "INFO",
        "max_rss_mb": 4000,  # the job's own limit below wins
        "job_runtime_attributes": {"f.leak.grow": {"max_rss_mb": LIMIT_MB}}})
    assert driver.wait_registered("f.leak.grow", 1)
    served: Counter[int] = Counter()
    rss: list[float] = []
    failed = 0
    with TestClient(gearmand, timeout=60) as client:
        for _ in range(JOBS):
            outcome = client.submit("f.leak.grow", str(LEAK_MB).encode())
            if outcome.final != "complete":
                failed += 1
                continue
            pid, size = outcome.result.decode().split(":")
            served[int(pid)] += 1
            rss.append(float(size))
    lines = [x for x in driver.log().splitlines() if "exceeds max_rss_mb" in x]
    record_figures(f"max_rss_mb: {LIMIT_MB} ({worker_backend})", sent=JOBS,
                   completed=sum(served.values()), failed=failed,
                   lost=JOBS - sum(served.values()) - failed, recover_s=None,
                   peak_rss_kb=peak_rss_kb(driver.pid),
                   notes=f"each job keeps {LEAK_MB} MB; {len(served)} pids served {JOBS} jobs "
                         f"({', '.join(str(n) for n in served.values())}); largest RSS at a "
                         f"job's end {max(rss):.0f} MB; {len(lines)} recycles logged")
    assert failed == 0 and sum(served.values()) == JOBS
    assert len(served) >= 3, served  # ~5 jobs a process
    assert max(rss) < LIMIT_MB + LEAK_MB + 8, rss  # the job that crossed it was the last one
    recycled = {int(m.group(1)) for x in lines
                if (m := re.search(r"recycling after job f\.leak\.grow \(handle H:\S+\), "
                                   r"process (\d+): resident memory [\d.]+ MB exceeds "
                                   rf"max_rss_mb {LIMIT_MB}$", x))}
    assert recycled and recycled <= set(served), lines
    assert len(recycled) >= len(served) - 1
    assert driver.proc is not None and driver.proc.poll() is None


def _connection_of(port: int, pid: int) -> str | None:
    """gearmand's fd for the worker connection of process `pid` (its client id names it)."""
    for line in worker_lines(port):
        tokens = line.split()
        if len(tokens) > 2 and tokens[2].split(":")[1:2] == [str(pid)]:
            return tokens[0]
    return None


@pytest.mark.slow
def test_a_job_over_max_workload_mb_fails_and_the_worker_stays(worker_backend: str, gearmand,
                                                               driver_factory) -> None:
    driver = driver_factory(gearmand, {"namespaces": ["tw.faults.recycle"], "loglevel": "INFO",
                                       "max_workload_mb": 1})
    assert driver.wait_registered("f.recycle.pid", 1)
    size = 3 * 1024 * 1024
    with TestClient(gearmand, timeout=30) as client:
        before = client.submit("f.recycle.pid", b"small")
        pid = int(before.result.decode().split(":")[1])
        fd = _connection_of(gearmand, pid)
        big = client.submit("f.recycle.pid", b"y" * size)
        after = client.submit("f.recycle.pid", b"small")
    lines = [x for x in driver.log().splitlines() if "exceeds max_workload_mb" in x]
    record_figures(f"workload over max_workload_mb: 1 ({worker_backend})", sent=3,
                   completed=int(before.final == "complete") + int(after.final == "complete"),
                   failed=int(big.final == "fail"), lost=0, recover_s=None,
                   peak_rss_kb=peak_rss_kb(driver.pid),
                   notes=f"a {size // 2**20} MiB workload: client got {big.final.upper()}, "
                         f"{len(lines)} log line(s); the same process and connection served "
                         f"the next job: {after.result.decode().endswith(f':{pid}')}")
    assert big.final == "fail", big.events
    assert len(lines) == 1, lines
    assert f"workload of {size} bytes exceeds max_workload_mb ({2**20} bytes)" in lines[0]
    assert "f.recycle.pid" in lines[0] and "(handle H:" in lines[0]
    assert after.final == "complete" and after.result.decode() == f"small:{pid}"
    assert fd is not None and _connection_of(gearmand, pid) == fd  # the same connection
    assert driver.proc is not None and driver.proc.poll() is None
