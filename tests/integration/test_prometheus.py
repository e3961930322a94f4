"""A real Prometheus scrapes a real gearman-driver: what it stores is what happened.

Prometheus (Debian's `prometheus` package) runs on a free loopback port with a 1 s scrape
interval and its TSDB in the test's temp dir; the test asks its HTTP query API, as an
operator's dashboard would. promtool (same package) checks the exposition.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.gearmand_util import TestClient, free_port, stop_process, wait_for

JOB = "m.work"
SCRAPE_JOB = "gearman-driver"
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_queries() -> tuple[list[str], str]:
    """The README's example PromQL queries and its alert's expression, as an operator copies
    them."""
    text = README.read_text()
    section = text[text.index("## Metrics"):]
    section = section[:section.index("\n## ", 1)]
    queries = re.findall(r"```promql\n(.*?)\n```", section, re.DOTALL)
    alert = re.search(r"expr: \|\n(.*?)\n\s+for:", section, re.DOTALL)
    assert len(queries) == 3 and alert is not None
    return queries, " ".join(alert.group(1).split())


class Prometheus:
    """One private Prometheus server scraping `target`; stopped by pid."""

    def __init__(self, tmp_path: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        assert binary, "Debian's prometheus package is needed (scripts/test installs it)"
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [{"job_name": SCRAPE_JOB, "static_configs": [
                {"targets": [target]}]}],
        }))
        self.log_path = tmp_path / "prometheus.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) per series."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"http://127.0.0.1:{self.port}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            answer = json.load(reply)
        assert answer["status"] == "success", answer
        return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]

    def value(self, promql: str, at: float | None = None) -> float | None:
        """The single value of a query, or None when it has no series (yet)."""
        try:
            result = self.query(promql, at)
        except OSError:  # not listening yet
            return None
        assert len(result) <= 1, result
        return result[0][1] if result else None

    def wait_value(self, promql: str, expected: Callable[[float], bool],
                   timeout: float = 20.0) -> float | None:
        """Poll until the query's value satisfies `expected`; the last value seen either way."""
        seen: list[float | None] = [None]

        def check() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            seen[0] = self.value(promql)
            return seen[0] is not None and expected(seen[0])

        wait_for(check, timeout, interval=0.2)
        return seen[0]


@pytest.fixture
def metrics_driver(gearmand: int, driver_factory: Callable[..., DriverProcess]
                   ) -> tuple[DriverProcess, int]:
    """A driver with its metrics endpoint on a free port; yields it and the port."""
    metrics_port = free_port()
    driver = driver_factory(gearmand, {"namespaces": ["tw.metrics"], "interval": 1,
                                       "max_idle_time": 1, "metrics_port": metrics_port})
    assert driver.wait_registered("m.run", 1)
    return driver, metrics_port


@pytest.fixture
def prometheus(metrics_driver: tuple[DriverProcess, int], tmp_path: Path
               ) -> Iterator[Prometheus]:
    """A Prometheus that has scraped the driver at least once."""
    server = Prometheus(tmp_path, f"127.0.0.1:{metrics_driver[1]}")
    try:
        up = server.wait_value(f'up{{job="{SCRAPE_JOB}"}}', lambda v: v == 1, timeout=30)
        assert up == 1, server.log_path.read_text()[-3000:]
        yield server
    finally:
        server.stop()


def jobs_total(labels: str = "") -> str:
    return f'sum(gearman_driver_jobs_total{{job_name="{JOB}"{labels}}})'


def test_prometheus_sees_jobs_failures_durations_and_scaling(
        prometheus: Prometheus, gearmand: int) -> None:
    assert prometheus.wait_value(jobs_total(), lambda v: v == 0) == 0  # scraped from zero
    before = time.time()
    baseline = (prometheus.value(jobs_total(), before),
                prometheus.value(jobs_total(',result="failed"'), before))
    assert baseline == (0, 0)

    with TestClient(gearmand) as client:
        outcomes = [client.submit("m.run", b"ok").final for _ in range(20)]
        outcomes += [client.submit("m.run", b"fail").final for _ in range(5)]
        outcomes += [client.submit("m.echo", b"x").final for _ in range(4)]
        outcomes.append(client.submit("m.run", b"sleep:1500").final)
    assert outcomes.count("complete") == 25 and outcomes.count("fail") == 5

    assert prometheus.wait_value(jobs_total(), lambda v: v == 30) == 30
    assert prometheus.value(jobs_total(',result="failed"')) == 5
    assert prometheus.value(jobs_total(',function="m.echo",result="complete"')) == 4
    slow = prometheus.value(
        f'histogram_quantile(0.99, sum by (le) '
        f'(gearman_driver_job_duration_seconds_bucket{{job_name="{JOB}"}}))')
    assert slow is not None and 1.0 <= slow <= 2.5  # the 1.5 s job's bucket
    typical = prometheus.value(
        f'histogram_quantile(0.5, sum by (le) '
        f'(gearman_driver_job_duration_seconds_bucket{{job_name="{JOB}"}}))')
    assert typical is not None and typical <= 0.1
    total_seconds = prometheus.value(
        f'gearman_driver_job_duration_seconds_sum{{job_name="{JOB}"}}')
    assert total_seconds is not None and 1.5 <= total_seconds < 10

    rate, p95, saturation = (prometheus.query(q) for q in readme_queries()[0])
    assert [(labels["job_name"], value > 0) for labels, value in rate] == [(JOB, True)]
    assert [(labels["job_name"], value > 0) for labels, value in p95] == [(JOB, True)]
    assert [labels["job_name"] for labels, _ in saturation] == [JOB]

    processes = f'gearman_driver_processes{{job_name="{JOB}"}}'
    assert prometheus.value(processes) == 1
    alert = readme_queries()[1]
    assert prometheus.query(alert) == []
    with TestClient(gearmand) as client:
        client.submit_many_bg("m.run", [b"sleep:1000"] * 24)
    assert prometheus.wait_value(processes, lambda v: v == 4) == 4  # max_processes
    assert prometheus.wait_value(f'gearman_driver_processes_busy{{job_name="{JOB}"}}',
                                 lambda v: v == 4) == 4
    assert prometheus.wait_value(f"count({alert})", lambda v: v == 1) == 1  # the alert fires
    assert prometheus.wait_value(  # saturation, as the README computes it
        f'{readme_queries()[0][2]} and on (job_name) gearman_driver_processes_busy > 3',
        lambda v: v == 1) == 1
    assert prometheus.value(f'gearman_driver_max_processes{{job_name="{JOB}"}}') == 4
    assert prometheus.wait_value(processes, lambda v: v == 1, timeout=40) == 1  # idle: back down
    assert prometheus.value(f'gearman_driver_process_starts_total{{job_name="{JOB}"}}') == 4
    # the stopped processes' counts were folded into the job, not lost
    assert prometheus.wait_value(jobs_total(), lambda v: v == 54) == 54
    assert prometheus.value(f'gearman_driver_gearmand_up{{server="127.0.0.1:{gearmand}"}}') == 1


def test_promtool_accepts_the_exposition(metrics_driver: tuple[DriverProcess, int],
                                         gearmand: int) -> None:
    metrics_port = metrics_driver[1]
    with TestClient(gearmand) as client:
        client.submit("m.run", b"ok")
        client.submit("m.run", b"fail")
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read()
    assert b"gearman_driver_jobs_total{" in text
    promtool = shutil.which("promtool")
    assert promtool, "Debian's prometheus package is needed (scripts/test installs it)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_reloads_are_counted_by_result_and_follow_a_new_metrics_port(
        metrics_driver: tuple[DriverProcess, int]) -> None:
    driver, old_port = metrics_driver

    def reloads(port: int) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^gearman_driver_reloads_total\{result="(\w+)"\} (\S+)$', text, re.MULTILINE)}

    assert reloads(old_port) == {"ok": 0, "failed": 0}
    driver.rewrite_config({"max_idle_time": 2})
    driver.signal(signal.SIGHUP)
    assert wait_for(lambda: reloads(old_port) == {"ok": 1, "failed": 0})
    driver.rewrite_config({"interval": "often"})
    driver.signal(signal.SIGHUP)
    assert wait_for(lambda: reloads(old_port) == {"ok": 1, "failed": 1})

    new_port = free_port()
    driver.rewrite_config({"interval": 1, "metrics_port": new_port})
    driver.signal(signal.SIGHUP)

    def moved() -> bool:
        try:
            return reloads(new_port) == {"ok": 2, "failed": 1}
        except OSError:  # not listening yet
            return False

    assert wait_for(moved)
    with pytest.raises(OSError):
        reloads(old_port)


def test_the_daemon_answers_a_scrape_while_100_idle_connections_are_held(
        metrics_driver: tuple[DriverProcess, int]) -> None:
    _, metrics_port = metrics_driver
    idle = [socket.create_connection(("127.0.0.1", metrics_port), timeout=5) for _ in range(100)]
    try:
        for sock in idle[::2]:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # half a request, then silence
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2.0) as reply:  # a timeout fails the test
            assert b"gearman_driver_processes{" in reply.read()
    finally:
        for sock in idle:
            sock.close()
