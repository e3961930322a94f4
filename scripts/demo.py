"""Drive the demo: start gearmand and gearman-driver, send jobs, show the scaling, clean up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gearman

from gearman_driver.console.client import query

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "etc" / "gearman-driver" / "config.yml"
TEXT = "examples.workers.text.Text."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gearmand_admin(port: int, command: str) -> list[str]:
    """One command on gearmand's text admin protocol (its reply ends with a '.' line)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command.encode() + b"\n")
        data = b""
        while not (data == b".\n" or data.endswith(b"\n.\n")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return [line for line in data.decode().splitlines() if line != "."]


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def processes_per_job(console: int) -> str:
    lines = query(f"127.0.0.1:{console}", "status")
    return "\n".join("    " + line for line in lines)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="gearman-driver-demo-"))
    port, console = free_port(), free_port()
    started: list[subprocess.Popen[bytes]] = []
    try:
        print(f"==> gearmand on 127.0.0.1:{port}")
        gearmand = subprocess.Popen(
            ["/usr/sbin/gearmand", "--listen=127.0.0.1", f"--port={port}", "--threads=1",
             f"--log-file={work / 'gearmand.log'}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(gearmand)
        wait_until(lambda: _answers(port), 10, "gearmand")

        print(f"==> gearman-driver --configfile {CONFIG.relative_to(ROOT)} "
              f"(log: {work / 'driver.log'})")
        log = open(work / "driver.log", "wb")
        driver = subprocess.Popen(
            [sys.executable, "-m", "gearman_driver.cli", "--configfile", str(CONFIG),
             "--server", f"127.0.0.1:{port}", "--console_port", str(console),
             "--lib", str(ROOT), "--interval", "1", "--max_idle_time", "3"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        started.append(driver)
        wait_until(lambda: _registered(port, TEXT + "upper"), 15, "the workers to register")
        print("==> processes per job at start (console `status`):")
        print(processes_per_job(console))

        client = gearman.GearmanClient([f"127.0.0.1:{port}"])
        print("==> a few foreground jobs and their results:")
        for function, data in ((TEXT + "upper", b"hello gearman"),
                               (TEXT + "reverse", b"stressed"),
                               (TEXT + "word_count", b"the quick brown fox"),
                               ("maths.add", b"1 2 3 4"),
                               ("maths.multiply", b"6 7")):
            request = client.submit_job(function.encode(), data, poll_timeout=10)
            print(f"    {function}({data.decode()!r}) -> {request.result.decode()!r}")

        burst = 200
        print(f"==> a burst of {burst} background word_count jobs (50 ms each)")
        jobs = [{"task": (TEXT + "word_count").encode(), "data": f"job number {i}".encode()}
                for i in range(burst)]
        client.submit_multiple_jobs(jobs, background=True, wait_until_complete=False,
                                    poll_timeout=10)
        peak = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = {line.split("\t")[0]: line.split("\t")
                      for line in gearmand_admin(port, "status")}
            row = status.get(TEXT + "word_count")
            workers = int(row[3]) if row else 0
            peak = max(peak, workers)
            if row and row[1] == "0":
                break
            time.sleep(0.1)
        print(f"    queue drained; word_count peaked at {peak} processes")
        print("==> processes per job after the burst:")
        print(processes_per_job(console))
        print("==> waiting for idle processes to be stopped (max_idle_time 3 s)")
        time.sleep(5)
        print(processes_per_job(console))
        return 0
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        print("==> stopped gearman-driver and gearmand")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"version\n")
            return bool(sock.recv(100))
    except OSError:
        return False


def _registered(port: int, function: str) -> bool:
    return any(line.split("\t")[0] == function and int(line.split("\t")[3]) > 0
               for line in gearmand_admin(port, "status") if line.count("\t") == 3)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
