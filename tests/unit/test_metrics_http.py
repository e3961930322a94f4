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

from gearman_driver.master.metrics_http import MAX_CONNECTIONS, MAX_REQUEST, MetricsServer
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
