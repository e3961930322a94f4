"""gearmand with its sqlite queue is killed and restarted amid 10,000 background jobs:
every id is recorded at least once, the driver never exits, workers re-register quickly."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from gearman_driver.protocol import Cmd, encode_request
from tests.faults.faultutil import peak_rss_kb, record_figures
from tests.gearmand_util import TestClient, start_gearmand, stop_gearmand, wait_for

JOBS = 10_000
BATCH = 200
FUNCTION = "f.rec.record"


def queue_dir(tmp_path: Path) -> Path:
    """Where the sqlite file lives: tmpfs when there is one.

    gearmand commits every insert and delete of its sqlite queue, so on this machine's ext4
    it manages ~460 background submissions/s and the 10,000-job run takes ~60 s instead of
    ~15 s. tmpfs keeps the file across a gearmand crash and restart (what this test is
    about) without the fsync cost; GD_FAULT_SQLITE_DIR chooses another directory.
    """
    base = os.environ.get("GD_FAULT_SQLITE_DIR") or (
        "/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    if base is None:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="gd-faults-", dir=base))


def submit_batch(client: TestClient, ids: list[int]) -> None:
    """Pipelined SUBMIT_JOB_BG; the id is both the workload and the unique id.

    The unique id matters: gearmand's libsqlite3 queue keys rows by (unique, function), so
    background jobs submitted without one collapse into a single persisted row.
    """
    client.sock.sendall(b"".join(
        encode_request(Cmd.SUBMIT_JOB_BG, FUNCTION.encode(), f"id-{i}".encode(),
                       f"id-{i}".encode()) for i in ids))
    for _ in ids:
        client._expect(Cmd.JOB_CREATED)


@pytest.mark.slow
def test_sqlite_queue_survives_gearmand_restart(tmp_path: Path, driver_factory) -> None:
    qdir = queue_dir(tmp_path)
    db = qdir / "q.db"
    record = tmp_path / "record.txt"
    queue_args = ("--queue-type=libsqlite3", f"--libsqlite3-db={db}")
    proc, port = start_gearmand(tmp_path / "g1", *queue_args)
    try:
        driver = driver_factory(port, {
            "namespaces": ["tw.faults.record"], "loglevel": "INFO",
            "worker_options": {"GLOBAL": {"record_file": str(record)}}})
        assert driver.wait_registered(FUNCTION, 2)

        acked: set[int] = set()
        resubmits = [0]
        errors: list[BaseException] = []

        def submitter() -> None:
            try:
                client: TestClient | None = None
                todo = list(range(JOBS))
                deadline = time.monotonic() + 120
                while todo and time.monotonic() < deadline:
                    batch = todo[:BATCH]
                    try:
                        if client is None:
                            client = TestClient(port, timeout=10)
                        submit_batch(client, batch)
                    except (OSError, ConnectionError):
                        if client is not None:
                            client.close()
                        client = None
                        resubmits[0] += 1
                        time.sleep(0.1)
                        continue  # the whole batch again: unacked jobs may not exist
                    acked.update(batch)
                    del todo[:BATCH]
                if client is not None:
                    client.close()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        thread = threading.Thread(target=submitter, daemon=True)
        thread.start()
        assert wait_for(lambda: len(acked) >= JOBS // 2, 60), "submissions too slow"
        os.kill(proc.pid, signal.SIGKILL)  # a crash, not a polite stop
        proc.wait(5)
        down_at = time.monotonic()
        time.sleep(1.0)
        proc, port2 = start_gearmand(tmp_path / "g2", *queue_args, port=port)
        assert port2 == port
        back_at = time.monotonic()
        assert wait_for(lambda: driver.registered(FUNCTION) >= 2, 15)
        reregistered = time.monotonic() - back_at
        thread.join(120)
        assert not errors, errors
        assert len(acked) == JOBS

        def recorded() -> set[str]:
            return set(record.read_text().split()) if record.exists() else set()

        wait_for(lambda: len(recorded()) >= JOBS, 90, interval=0.2)
        drained_at = time.monotonic()
        lines = record.read_text().split()
        seen = set(lines)
        missing = {f"id-{i}" for i in range(JOBS)} - seen
        assert driver.proc is not None and driver.proc.poll() is None, "the driver exited"
        peak = peak_rss_kb(driver.pid)
        record_figures("gearmand (sqlite queue) kill -9 + restart", sent=JOBS,
                       completed=len(seen), failed=0, lost=len(missing),
                       recover_s=reregistered, peak_rss_kb=peak,
                       notes=f"workers registered again {reregistered:.2f}s after gearmand "
                             f"was back (down {back_at - down_at:.1f}s); "
                             f"{len(lines) - len(seen)} ids recorded twice (at-least-once); "
                             f"{resubmits[0]} batch(es) resubmitted; drained "
                             f"{drained_at - back_at:.1f}s after restart",
                       duplicates=len(lines) - len(seen), queue_dir=str(qdir.parent))
        assert not missing, f"{len(missing)} ids never recorded, e.g. {sorted(missing)[:5]}"
        assert reregistered < 5.0
    finally:
        stop_gearmand(proc)
        if qdir != tmp_path:
            shutil.rmtree(qdir, ignore_errors=True)
