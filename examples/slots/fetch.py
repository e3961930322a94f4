"""I/O-bound jobs: each waits on a local HTTP service, so one process holds many at once.

Run it against any local HTTP service (worker_options give its base URL):

    worker_options:
      examples.slots.fetch.Fetch: {base_url: "http://127.0.0.1:8000"}

`fetch.get` is `async def`: its jobs are tasks of one event loop, 100 per process at once.
`fetch.get_blocking` is a plain method using urllib: its jobs run on 20 threads per process.
Both answer "<status> <length>" for the path in the workload.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
from typing import Any

from gearman_driver import Worker, job


class Fetch(Worker):
    prefix = "fetch."

    def __init__(self, *, server: str, base_url: str = "http://127.0.0.1:8000",
                 **options: Any) -> None:
        super().__init__(server=server, **options)
        self.base_url = base_url.rstrip("/")

    @job(concurrency=100, min_processes=1, max_processes=4, timeout=30)
    async def get(self, job: Any, workload: bytes) -> str:
        """GET the path with a few lines of asyncio: no blocking call may run here, or every
        job of the process waits for it."""
        url = urllib.parse.urlsplit(self.base_url + "/" + workload.decode().lstrip("/"))
        reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
        try:
            writer.write(f"GET {url.path or '/'} HTTP/1.0\r\nHost: {url.hostname}\r\n\r\n"
                         .encode())
            await writer.drain()
            status_line = await reader.readline()
            while (await reader.readline()).strip():  # the headers, up to the blank line
                pass
            body = await reader.read()  # HTTP/1.0: the server closes after the body
        finally:
            writer.close()
        words = status_line.split()
        status = words[1].decode() if len(words) > 1 else "?"
        return f"{status} {len(body)}"

    @job(concurrency=20, min_processes=1, max_processes=2, timeout=30)
    def get_blocking(self, job: Any, workload: bytes) -> str:
        """The same with a blocking library: each job holds one of the process's 20 threads."""
        url = self.base_url + "/" + workload.decode().lstrip("/")
        with urllib.request.urlopen(url, timeout=20) as reply:
            return f"{reply.status} {len(reply.read())}"
