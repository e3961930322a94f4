"""How fast one NativeBackend process drains trivial background jobs from a local gearmand.

Queues N background jobs first (pipelined, over our codec), then forks one worker process and
times it from its first job to the last, reading progress from a shared counter. Prints jobs/s.

    .venv/bin/python bench/native_throughput.py [-n 40000] [--runs 5] [--backend native|c]

`--backend c` times libgearman's C worker (`gearman -w -c N`) on the same queue: the figure
to compare with, since both are bound by one gearmand round trip per job.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from gearmand_util import TestClient, start_gearmand, status_table, stop_gearmand  # noqa: E402

from gearman_driver.child.backends import BackendHooks, GearmanJob, JobResult, backend_class  # noqa: E402

FUNCTION = "bench_echo"


def _worker(backend: str, port: int, n: int, done: Any, t0: Any, t1: Any) -> None:
    count = 0

    def echo(job: GearmanJob) -> JobResult:
        nonlocal count
        count += 1
        if count == 1:
            t0.value = time.perf_counter()
        if count == n:
            t1.value = time.perf_counter()
            done.value = 1
        return JobResult("complete", job.workload)

    hooks = BackendHooks(should_stop=lambda: bool(done.value), poll_interval=0.2)
    cls = backend_class(backend)
    cls([("127.0.0.1", port)], "bench", {FUNCTION: echo}, hooks).run()


def run_once(backend: str, n: int, tmp: Path, gearmand_args: list[str]) -> float:
    proc, port = start_gearmand(tmp, *gearmand_args)
    try:
        with TestClient(port) as client:
            client.submit_many_bg(FUNCTION, [b"x%d" % i for i in range(n)])
        assert status_table(port)[FUNCTION][0] == n
        if backend == "c":  # libgearman's own worker: the ceiling on this machine
            start = time.perf_counter()
            subprocess.run(["gearman", "-w", "-h", "127.0.0.1", "-p", str(port), "-f", FUNCTION,
                            "-c", str(n)], stdout=subprocess.DEVNULL, check=True, timeout=300)
            return n / (time.perf_counter() - start)
        ctx = mp.get_context("fork")
        done, t0, t1 = ctx.Value("i", 0), ctx.Value("d", 0.0), ctx.Value("d", 0.0)
        worker = ctx.Process(target=_worker, args=(backend, port, n, done, t0, t1))
        worker.start()
        worker.join(300)
        if worker.is_alive():
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            worker.join()
            raise RuntimeError("worker did not finish")
        # the count includes the first job, the clock starts when it ran
        return (n - 1) / (t1.value - t0.value)
    finally:
        stop_gearmand(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=40000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", default="native", help='a backend name, or "c" for gearman -w')
    parser.add_argument("--threads", type=int, default=1, help="gearmand I/O threads")
    args = parser.parse_args()
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            rate = run_once(args.backend, args.n, Path(tmp) / str(i), [f"--threads={args.threads}"])
            rates.append(rate)
            print(f"run {i + 1}: {rate:,.0f} jobs/s")
    rates.sort()
    print(f"{args.backend}: median {rates[len(rates) // 2]:,.0f} jobs/s over {args.runs} runs "
          f"of {args.n} trivial background jobs, 1 process, os.cpu_count()={os.cpu_count()}")


if __name__ == "__main__":
    main()
