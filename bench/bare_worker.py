"""A worker without gearman-driver: one interpreter, one function, a plain library loop.

    python -m bench.bare_worker --port P --module bw_echo.jobs --function bench.echo

`--backend pygearman` is the loop a supervisord-managed worker runs (`GearmanWorker`, task
name as bytes, return the result); `--backend native` runs our NativeBackend without the
driver's wrapper. SIGTERM ends the process at once (the default action), as it does under
supervisord.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

WORKERS_DIR = Path(__file__).resolve().parent / "workers"


def run_pygearman(port: int, function: str, task: Callable[[bytes], bytes],
                  client_id: str) -> None:
    import gearman

    worker = gearman.GearmanWorker([f"127.0.0.1:{port}"])
    if client_id:
        worker.set_client_id(client_id.encode())
    worker.register_task(function.encode(), lambda _worker, job: task(job.data))
    worker.work()


def run_native(port: int, function: str, task: Callable[[bytes], bytes], client_id: str) -> None:
    from gearman_driver.child.backends import BackendHooks, GearmanJob, JobResult, backend_class

    def runner(job: GearmanJob) -> JobResult:
        return JobResult("complete", task(job.workload))

    backend = backend_class("native")([("127.0.0.1", port)], client_id, {function: runner},
                                      BackendHooks(should_stop=lambda: False))
    backend.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--module", required=True, help="e.g. bw_big.jobs (under bench/workers)")
    parser.add_argument("--function", required=True)
    parser.add_argument("--backend", choices=("pygearman", "native"), default="pygearman")
    parser.add_argument("--client-id", default="")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(WORKERS_DIR))
    module = importlib.import_module(args.module)
    task: Callable[[bytes], bytes] = module.BARE_TASKS[args.function]
    run = run_pygearman if args.backend == "pygearman" else run_native
    run(args.port, args.function, task, args.client_id)


if __name__ == "__main__":
    main()
