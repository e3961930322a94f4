"""64 idle and 64 byte-a-second TCP connections, those the daemon closes reopened every
second, must not lock anyone out of the console (issue 12, item 8): every legitimate `status`, over
TCP and over the unix socket, is answered during the flood."""

from __future__ import annotations

import selectors
import socket
import statistics
import threading
import time

import pytest

from gearman_driver.console.client import query
from tests.faults.faultutil import console_config, peak_rss_kb, record_figures
from tests.gearmand_util import wait_for

JOB = "f.slow.sleep"
FLOOD = 64  # of each kind: as many as the console's connection budget
CALLS = 20


class Flood:
    """Holds FLOOD idle and FLOOD slow connections; once a second, sends each slow one a byte
    and reopens those the server closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.opened = 0
        self.closed_by_server = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def connect(self, sel: selectors.BaseSelector, kind: str) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        except OSError:
            return
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, kind)
        self.opened += 1

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for _ in range(FLOOD):
            self.connect(sel, "idle")
            self.connect(sel, "slow")
        next_byte = time.monotonic() + 1.0
        while not self.stop.is_set():
            for key, _ in sel.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    sock.recv(4096)  # EOF, or the server's farewell line before it
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                sel.unregister(sock)
                sock.close()
                self.closed_by_server += 1
            if time.monotonic() >= next_byte:  # one byte a second, never a newline
                next_byte += 1.0
                for key in list(sel.get_map().values()):
                    if key.data == "slow":
                        try:
                            key.fileobj.send(b"s")  # type: ignore[union-attr]
                        except OSError:
                            pass
                kinds = [key.data for key in sel.get_map().values()]
                for kind in ("idle", "slow"):
                    for _ in range(FLOOD - kinds.count(kind)):
                        self.connect(sel, kind)
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()


@pytest.mark.slow
def test_idle_and_slow_connections_do_not_lock_out_the_console(gearmand, driver_factory,
                                                                tmp_path) -> None:
    cport, cfg = console_config()
    sock_path = str(tmp_path / "console.sock")
    driver = driver_factory(gearmand, {"namespaces": ["tw.faults.slow"], **cfg,
                                       "console_socket": sock_path, "loglevel": "INFO"})
    assert driver.wait_registered(JOB, 1)
    flood = Flood(cport)
    began = time.monotonic()
    flood.thread.start()
    latencies: dict[str, list[float]] = {"tcp": [], "unix": []}
    try:
        assert wait_for(lambda: flood.opened >= 2 * FLOOD, 10)
        for i in range(CALLS):
            transport = "tcp" if i % 2 == 0 else "unix"
            address = f"127.0.0.1:{cport}" if transport == "tcp" else sock_path
            t0 = time.monotonic()
            reply = query(address, "status", timeout=5.0) if transport == "tcp" else \
                _unix_status(sock_path)
            latencies[transport].append(time.monotonic() - t0)
            assert any(line.startswith(JOB) for line in reply), (transport, reply)
            time.sleep(0.5)  # calls spread over ~10 s of flood
        during = flood.closed_by_server
        assert wait_for(lambda: flood.closed_by_server >= during + FLOOD, 15), \
            "slow connections were not closed"
    finally:
        flood.stop.set()
        flood.thread.join(10)
    flooded = time.monotonic() - began
    log = driver.log()
    assert "Traceback" not in log
    summaries = log.count("sent no complete line within 5 s")
    assert 1 <= summaries <= flooded / 10 + 1, (summaries, flooded)  # one per 10 s at most
    everything = latencies["tcp"] + latencies["unix"]
    record_figures(
        "console flood (64 idle + 64 slow TCP connections)", sent=CALLS, completed=len(everything),
        failed=0, lost=CALLS - len(everything), recover_s=max(everything),
        peak_rss_kb=peak_rss_kb(driver.pid),
        notes=f"{CALLS} status calls during the flood (TCP and unix socket alternating, "
              f"0.5 s apart) all answered: slowest {max(everything) * 1000:.0f} ms, median "
              f"{statistics.median(everything) * 1000:.0f} ms (TCP slowest "
              f"{max(latencies['tcp']) * 1000:.0f} ms, unix "
              f"{max(latencies['unix']) * 1000:.0f} ms); the flood opened {flood.opened} "
              f"connections (closed ones reopened every second), the daemon closed "
              f"{flood.closed_by_server} (line timeout 5 s, or room made for a newcomer)")


def _unix_status(path: str) -> list[str]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5.0)
        sock.connect(path)
        sock.sendall(b"status\n")
        data = b""
        while not data.endswith(b"\n.\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode().splitlines()[:-1]
