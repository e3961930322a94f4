"""Jobs that wait on I/O: each asks the bench's delay server (bench/delay_server.py, a real
local TCP server) to answer after the workload's seconds, over a connection of its own; one
blocking kind per process, one async kind and one threaded kind with many slots; and trivial
ones to time a trickle of jobs through idle slots."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from gearman_driver import Worker, job

_PORT = int(os.environ.get("BW_DELAY_PORT", "0"))


def _blocking_wait(workload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", _PORT), timeout=60) as conn:
        conn.sendall(workload + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = conn.recv(64)
            if not chunk:
                break
            answer += chunk
    return answer.strip()


class Io(Worker):
    prefix = "bench."

    @job
    def io_process(self, job: Any, workload: bytes) -> bytes:
        """One job per process (concurrency 1): the process waits with it."""
        return _blocking_wait(workload)

    @job(concurrency=50)
    def io_thread(self, job: Any, workload: bytes) -> bytes:
        return _blocking_wait(workload)

    @job(concurrency=200)
    async def io_async(self, job: Any, workload: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", _PORT)
        writer.write(workload + b"\n")
        await writer.drain()
        answer = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return answer.strip()

    @job
    def trivial_plain(self, job: Any, workload: bytes) -> bytes:
        return workload

    @job
    def trivial_herd(self, job: Any, workload: bytes) -> bytes:
        """Run with 200 processes of one slot: one sleeping connection per slot."""
        return workload

    @job
    async def trivial_one_slot(self, job: Any, workload: bytes) -> bytes:
        return workload

    @job(concurrency=200)
    async def trivial_200_slots(self, job: Any, workload: bytes) -> bytes:
        return workload
