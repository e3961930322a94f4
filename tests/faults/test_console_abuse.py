"""Random bytes, huge lines, unread replies and many connections on the console: the master
keeps answering and scaling, and its memory stays bounded."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest

from tests.faults.faultutil import console, console_config, peak_rss_kb, record_figures, rss_kb
from tests.gearmand_util import TestClient, status_table, wait_for

ABUSE_SECONDS = 10.0


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    sock.settimeout(2)
    return sock


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the server may close on us mid-send: that is its right


def _recv(sock: socket.socket) -> None:
    try:
        sock.recv(65536)
    except OSError:
        pass


def abuse(port: int, stop: threading.Event, seed: int, counts: dict[str, int]) -> None:
    rng = random.Random(seed)
    kinds = ["random", "huge", "unread", "mixed", "half"]
    if seed == 0:
        kinds.append("crowd")  # one crowd at a time, so the poller gets in between
    while not stop.is_set():
        kind = rng.choice(kinds)
        counts[kind] = counts.get(kind, 0) + 1
        try:
            if kind == "random":  # random bytes, newlines included, then hang up
                with _connect(port) as s:
                    _send(s, rng.randbytes(rng.randint(1, 65536)))
            elif kind == "huge":  # a 1 MB line: refused, connection closed
                with _connect(port) as s:
                    _send(s, b"x" * (1 << 20))
                    _recv(s)
            elif kind == "unread":  # thousands of commands, replies never read
                with _connect(port) as s:
                    _send(s, b"status\nhelp\n" * 5000)
                    time.sleep(0.3)
            elif kind == "crowd":  # more connections than the limit, held a moment
                socks = []
                for _ in range(100):
                    try:
                        socks.append(_connect(port))
                    except OSError:
                        break
                time.sleep(0.3)
                for s in socks:
                    s.close()
            elif kind == "mixed":  # valid commands between garbage lines
                with _connect(port) as s:
                    junk = b"\n".join(rng.randbytes(rng.randint(0, 300)).replace(b"\n", b"")
                                      for _ in range(20))
                    _send(s, junk + b"\nstatus\n\x00\xff\r\nshow\n")
                    _recv(s)
            else:  # half a line, then silence, then gone
                with _connect(port) as s:
                    _send(s, b"sta")
                    time.sleep(0.2)
        except OSError:
            counts["refused"] = counts.get("refused", 0) + 1


@pytest.mark.slow
def test_console_abuse_leaves_the_master_answering_and_scaling(gearmand, driver_factory) -> None:
    cport, cfg = console_config()
    driver = driver_factory(gearmand, {"namespaces": ["tw.faults.slow"], "loglevel": "INFO",
                                       "max_idle_time": 2, **cfg})
    assert driver.wait_registered("f.slow.sleep", 1)
    assert console(cport, "status")
    base = rss_kb(driver.pid)
    stop = threading.Event()
    counts: dict[str, int] = {}
    abusers = [threading.Thread(target=abuse, args=(cport, stop, seed, counts), daemon=True)
               for seed in range(3)]
    for t in abusers:
        t.start()
    polls_ok, polls_busy, polls_failed = 0, 0, []
    grew_after: float | None = None
    try:
        t0 = time.monotonic()
        with TestClient(gearmand) as client:
            for _ in range(16):
                client.submit_bg("f.slow.sleep", b"1")
        while time.monotonic() - t0 < ABUSE_SECONDS:
            p0 = time.monotonic()
            try:
                lines = console(cport, "status", timeout=2.0)
                if lines and lines[0].startswith("ERR too_many_connections"):
                    polls_busy += 1  # a prompt, well-formed refusal while the crowd is in
                else:
                    assert any(x.startswith("f.slow.sleep") for x in lines), lines
                    polls_ok += 1
            except Exception as exc:  # noqa: BLE001
                polls_failed.append(repr(exc))
            if grew_after is None and len(driver.children()) >= 4:
                grew_after = time.monotonic() - t0
            time.sleep(max(0.0, 0.5 - (time.monotonic() - p0)))
    finally:
        stop.set()
        for t in abusers:
            t.join(10)
    drained = wait_for(lambda: status_table(gearmand).get("f.slow.sleep", (0,))[0] == 0, 20)
    after = rss_kb(driver.pid)
    peak = peak_rss_kb(driver.pid)
    assert console(cport, "status")
    log = driver.log()
    record_figures("console abuse (10 s, 3 abusers)", sent=16, completed=16 if drained else 0,
                   failed=0, lost=0 if drained else 16, recover_s=grew_after, peak_rss_kb=peak,
                   notes=f"{sum(counts.values())} abusive sessions "
                         f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
                         f"status polls: {polls_ok} answered, {polls_busy} refused "
                         f"(too many connections), {len(polls_failed)} unanswered; RSS "
                         f"{base / 1024:.1f} -> {after / 1024:.1f} MB; burst grew 1 -> 4+ "
                         f"processes in {grew_after if grew_after is not None else -1:.2f}s",
                   rss_growth_mb=round((after - base) / 1024, 1))
    assert not polls_failed, polls_failed[:5]
    assert polls_ok >= 5
    assert grew_after is not None, "no scale-up during the abuse"
    assert drained
    assert after - base < 20 * 1024, (base, after)
    assert peak - base < 20 * 1024, (base, peak)
    assert driver.proc is not None and driver.proc.poll() is None
    assert "Traceback" not in log, log[log.find("Traceback") - 500:][:3000]
