"""The metrics endpoint over real sockets, with http.client, driven by a master-like loop."""

from __future__ import annotations

import http.client
import selectors
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from gearman_driver.master.metrics_http import (
    MAX_CONNECTIONS,
    MAX_REQUEST,
    REQUESTS_PER_TURN,
    MetricsServer,
)
from tests.gearmand_util import free_port
from tests.unit.test_console_support import Client, Loop, stop_server, wait_for

BODY = b"# TYPE up gauge\nup 1\n"


def render(accept: str) -> tuple[bytes, str]:
    if "openmetrics" in accept:
        return BODY + b"# EOF\n", "application/openmetrics-text; version=1.0.0; charset=utf-8"
    return BODY, "text/plain; version=0.0.4; charset=utf-8"


@pytest.fixture
def endpoint() -> Iterator[MetricsServer]:
    sel = selectors.DefaultSelector()
    server = MetricsServer(render, sel, port=0, idle_timeout=1.0)
    server.open()
    loop = Loop(server, sel).start()
    yield server
    stop_server(server, loop)


def get(server: MetricsServer, path: str = "/metrics", method: str = "GET",
        headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    conn.request(method, path, headers=headers or {})
    return conn.getresponse()


def test_scrape_answers_the_exposition_and_openmetrics_on_request(endpoint: MetricsServer) -> None:
    reply = get(endpoint)
    assert (reply.status, reply.read()) == (200, BODY)
    assert reply.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    reply = get(endpoint, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert reply.read().endswith(b"# EOF\n")
    assert reply.getheader("Content-Type", "").startswith("application/openmetrics-text")


def test_keep_alive_serves_several_scrapes_on_one_connection(endpoint: MetricsServer) -> None:
    conn = http.client.HTTPConnection(*endpoint.address, timeout=5)
    for _ in range(3):
        conn.request("GET", "/metrics?x=1")
        assert conn.getresponse().read() == BODY
    assert endpoint.connection_count == 1
    conn.close()


def test_other_paths_are_404_other_methods_405_head_has_no_body(endpoint: MetricsServer) -> None:
    assert get(endpoint, "/").status == 404
    assert get(endpoint, "/metricsx").status == 404
    reply = get(endpoint, method="DELETE")
    assert (reply.status, reply.getheader("Allow")) == (405, "GET, HEAD")
    reply = get(endpoint, method="HEAD")
    assert (reply.status, reply.getheader("Content-Length"), reply.read()) == \
        (200, str(len(BODY)), b"")


@pytest.mark.parametrize("garbage", [b"status\n", b"\x00\x01\x02\x03", b"GET /metrics\n",
                                     b"SSH-2.0-OpenSSH_9.2\r\n"])
def test_a_request_that_is_not_http_is_closed_without_a_reply(
        endpoint: MetricsServer, garbage: bytes) -> None:
    client = Client(endpoint.address)
    client.send(garbage)
    assert client.closed()
    assert client.buf == b""
    assert get(endpoint).status == 200


def test_a_request_head_too_large_is_refused_and_closed(endpoint: MetricsServer) -> None:
    client = Client(endpoint.address)
    client.send(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * MAX_REQUEST + b"\r\n")
    assert client.line() == b"HTTP/1.1 431 Request Header Fields Too Large\r"
    assert client.closed()


def test_a_whole_request_head_over_8_kib_is_refused_too(endpoint: MetricsServer) -> None:
    """The README promises 431 above 8 KiB, also for a head that arrives complete."""
    head = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    client = Client(endpoint.address)
    client.send(head)
    assert client.line() == b"HTTP/1.1 431 Request Header Fields Too Large\r"
    assert client.closed()


class CountingRender:
    """A render that counts its calls (the master's expensive part)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, accept: str) -> tuple[bytes, str]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("a collector's bug")
        return render(accept)


def counting_endpoint(counter: CountingRender) -> tuple[MetricsServer, Loop]:
    sel = selectors.DefaultSelector()
    server = MetricsServer(counter, sel, port=0, idle_timeout=5.0)
    server.open()
    return server, Loop(server, sel).start()


def test_pipelined_requests_render_at_most_a_few_times_per_turn() -> None:
    """One client pipelining 2,000 HEADs and GETs gets every answer, while the exposition is
    rendered at most RENDERS_PER_TURN times a turn (not once per request)."""
    counter = CountingRender()
    server, loop = counting_endpoint(counter)
    try:
        requests = 2000
        one = b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n"
        client = Client(server.address, timeout=30)
        client.send(one * (requests // 2))
        statuses = 0
        while statuses < requests:
            line = client.line()
            assert line is not None, f"closed after {statuses} answers"
            statuses += line.startswith(b"HTTP/1.1 200 OK")
        client.close()
        # each turn answers at most REQUESTS_PER_TURN of this connection: 125 turns at least,
        # and each rendered once (both methods share the render of one Accept header)
        assert counter.calls <= requests // REQUESTS_PER_TURN + 2
        assert counter.calls * REQUESTS_PER_TURN >= requests // 2
    finally:
        stop_server(server, loop)


def test_distinct_accept_headers_cannot_buy_more_renders_per_turn() -> None:
    counter = CountingRender()
    server, loop = counting_endpoint(counter)
    try:
        heads = b"".join(b"HEAD /metrics HTTP/1.1\r\nAccept: text/x-%d\r\n\r\n" % i
                         for i in range(200))
        client = Client(server.address, timeout=30)
        client.send(heads)
        for _ in range(200):
            line = client.line()
            while line is not None and not line.startswith(b"HTTP/1.1 "):
                line = client.line()
            assert line == b"HTTP/1.1 200 OK\r"
        client.close()
        assert counter.calls == 200  # each had to be rendered once: no answer was skipped
    finally:
        stop_server(server, loop)


@pytest.mark.parametrize("accept,expected", [
    ("application/openmetrics-text; version=abc", "text/plain; version=0.0.4"),
    ("application/openmetrics-text; version=1.0.0\x01", "text/plain; version=0.0.4"),
    ("application/openmetrics-text; version=1.0.0; escaping=??", ""),
    ("text/plain; version=nan", ""),
    ("text/plain; version=" + "9" * 5000, ""),
])
def test_an_accept_header_is_never_an_error(accept: str, expected: str) -> None:
    """Whatever the header, a body in a format Prometheus reads: the text format where
    prometheus_client cannot negotiate (it raised on `version=abc`: a 500 and a traceback in
    the log for every such scrape)."""
    from prometheus_client import CollectorRegistry, Gauge

    from gearman_driver.master.metrics import exposition

    registry = CollectorRegistry()
    Gauge("up_test", "a gauge", registry=registry).set(1)
    body, content_type = exposition(registry, accept)
    assert content_type.startswith(expected)
    assert content_type.isprintable() and content_type.isascii()
    assert b"up_test 1.0" in body


def test_a_failing_render_is_a_500_and_logged_at_most_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    counter = CountingRender(fail=True)
    server, loop = counting_endpoint(counter)
    try:
        with caplog.at_level("ERROR", logger="gearman_driver.metrics"):
            for _ in range(20):
                assert get(server).status == 500
        assert caplog.text.count("metrics: collecting failed") == 1
    finally:
        stop_server(server, loop)


def test_idle_connections_are_closed(endpoint: MetricsServer) -> None:
    client = Client(endpoint.address)
    client.send(b"GET /metr")  # a request begun and never finished
    assert client.closed()  # idle_timeout is 1 s in this fixture
    assert wait_for(lambda: endpoint.connection_count == 0)


def test_a_scrape_is_answered_within_2s_while_100_idle_connections_are_held(
        endpoint: MetricsServer) -> None:
    idle = [Client(endpoint.address) for _ in range(100)]
    try:
        for client in idle[::2]:
            client.send(b"GET /metrics HTTP/1.1\r\n")  # half a request, then silence
        assert wait_for(lambda: endpoint.connection_count == MAX_CONNECTIONS)
        conn = http.client.HTTPConnection(*endpoint.address, timeout=2.0)
        conn.request("GET", "/metrics")
        assert conn.getresponse().read() == BODY  # a socket timeout here fails the test
        assert endpoint.connection_count <= MAX_CONNECTIONS
        conn.close()
    finally:
        for client in idle:
            client.close()


def test_a_port_in_use_is_one_line_naming_the_key() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        server = MetricsServer(render, selectors.DefaultSelector(), port=port)
        with pytest.raises(OSError, match=rf"^metrics_port {port} on 127.0.0.1: "):
            server.open()
        assert server.connection_count == 0
    finally:
        holder.close()


def test_prometheus_client_is_imported_only_when_the_endpoint_is_on() -> None:
    """metrics_port 0 costs nothing: a master that opens without it never loads the library."""
    script = textwrap.dedent("""
        import sys, http.client
        from gearman_driver.master.driver import Driver
        port = int(sys.argv[1])
        driver = Driver(server="127.0.0.1:1", console_port=0, metrics_port=port)
        driver._open()
        loaded = "prometheus_client" in sys.modules
        driver._close()
        print(loaded)
    """)
    for port, loaded in ((0, "False"), (free_port(), "True")):
        out = subprocess.run([sys.executable, "-c", script, str(port)], capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
        assert out[-1] == loaded


def test_a_non_loopback_address_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    sel = selectors.DefaultSelector()
    server = MetricsServer(render, sel, host="0.0.0.0", port=0)
    with caplog.at_level("WARNING", logger="gearman_driver.metrics"):
        server.open()
    server.close()
    sel.close()
    assert "metrics has no authentication; listening on 0.0.0.0" in caplog.text


def test_what_render_keeps_open_is_released_in_a_child_and_with_the_server() -> None:
    released: list[bool] = []
    sel = selectors.DefaultSelector()
    server = MetricsServer(render, sel, port=0, release=lambda: released.append(True))
    server.open()
    server.close_in_child()  # as right after a fork
    assert released == [True]
    server.close()  # as the master does on shutdown, or when a reload moves the endpoint
    assert released == [True, True]
    sel.close()
