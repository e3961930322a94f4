"""The slots example (examples/slots) against a real local HTTP service: 60 requests that each
take 0.5 s are all answered, by one process of each kind, many at once."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess
from tests.gearmand_util import TestClient, free_port, running, status_table, wait_for

ROOT = Path(__file__).resolve().parents[2]


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        time.sleep(0.5)
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    """A local HTTP service answering each GET after 0.5 s with its path."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _SlowHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("function,in_flight", [("fetch.get", 60), ("fetch.get_blocking", 20)])
def test_the_fetch_example_holds_many_requests_per_process(
        gearmand: int, driver_factory: Callable[..., DriverProcess], service: str,
        function: str, in_flight: int) -> None:
    driver = driver_factory(gearmand, {
        "namespaces": ["examples.slots"], "lib": [str(ROOT)],
        "worker_options": {"examples.slots.fetch.Fetch": {"base_url": service}},
        "job_runtime_attributes": {"fetch.get": {"max_processes": 1},
                                   "fetch.get_blocking": {"max_processes": 1}}})
    assert driver.wait_registered(function, 1)
    with TestClient(gearmand) as client:
        client.submit_many_bg(function, [f"/item/{i}".encode() for i in range(60)])
    assert wait_for(lambda: running(gearmand, function) == in_flight, 10)
    assert wait_for(lambda: status_table(gearmand)[function][0] == 0, 30)
    with TestClient(gearmand) as client:
        assert client.submit(function, b"/one").result == b"200 4"
    assert len(driver.children()) == 2  # one process per job did it all
