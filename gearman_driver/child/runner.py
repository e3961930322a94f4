"""The runner around a job method: Gearman::Driver's Job::Method.

decode, the worker's `begin` hook, the user's method, `end`, `encode`, the result as bytes,
every failure turned into the result the client gets, and the scoreboard's accounting, for a
process of one slot: the job path, whose every step is measured. The slots of a process that
holds several jobs at once have theirs in slot_runner.py (which imports asyncio: only such a
job's processes and their master pay for it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gearman_driver import journal
from gearman_driver.api import Worker
from gearman_driver.child.backends import GearmanJob, JobResult, JobRunner
from gearman_driver.jobs.table import JobSpec, MethodSpec
from gearman_driver.scoreboard import SlotWriter, function_slot

log = logging.getLogger("gearman_driver.child")


def to_result_bytes(function: str, value: Any) -> bytes:
    """bytes and str are sent, None is an empty result; anything else needs an encode method."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if value is None:
        return b""
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(
        f"{function} returned {type(value).__name__}; return bytes, str or None, "
        f"or give the job an encode method"
    )


def make_runner(spec: JobSpec, method: MethodSpec, writer: SlotWriter,
                after_job: Callable[[GearmanJob], None] | None, index: int = 0) -> JobRunner:
    """Wraps one job method: decode, begin hook, the method, end hook, encode, scoreboard.
    `index` is the method's place in the job, under which the scoreboard counts its jobs;
    `after_job` (None: nothing to do) runs once the job is over, before its result is sent.

    Whatever raises fails the job with a plain WORK_FAIL, which every client understands
    (`sys.exit()` and KeyboardInterrupt too: counted and answered as the failures they are,
    and the process goes on, as after any exception);
    the exception text goes only to the log and the scoreboard, and to the client as
    WORK_EXCEPTION only for a job that opted in (docs/protocol.md says why).

    Runs on every job: each step the job does not need (no decode, no hooks, nothing after
    the job) is skipped rather than called, and the journal's job context
    (`journal.job_in_hand`) is set in place.
    """
    worker = spec.worker
    body, encode, decode, function = method.body, method.encode, method.decode, method.function
    index = function_slot(index)
    exceptions = method.exceptions
    begin, end = worker_hook(worker, "begin"), worker_hook(worker, "end")
    started, finished = writer.job_started, writer.job_finished
    context = journal
    new_result = tuple.__new__

    def run(job: GearmanJob) -> JobResult:
        handle = job.handle
        started(handle)
        context.job_in_hand = (function, handle)
        error: str | None = None
        try:
            workload = decode(job.workload) if decode else job.workload
            if begin is not None:
                begin(job, workload)
            if end is None:
                result = body(job, workload)
            else:
                try:
                    result = body(job, workload)
                finally:
                    end(job, workload)
            if encode:
                result = encode(result)
            if type(result) is not bytes:
                result = to_result_bytes(function, result)
            return new_result(JobResult, ("complete", result))  # JobResult(...) costs 2x
        except BaseException as exc:  # SystemExit, KeyboardInterrupt too: the job failed
            error = f"{type(exc).__name__}: {exc}"
            log.exception("job %s (handle %s) failed: %s", function,
                          handle.decode("ascii", "replace"), error)
            if exceptions:
                return JobResult("exception", error.encode("utf-8", "replace"))
            return JobResult("fail")
        finally:
            context.job_in_hand = None
            finished(error, index)
            if after_job is not None:
                after_job(job)

    return run


def worker_hook(worker: Any, name: str) -> Callable[[GearmanJob, Any], None] | None:
    """The worker's begin/end hook, or None when its class keeps Worker's empty one: the job
    path then skips a call that would do nothing."""
    hook = getattr(worker, name)
    if getattr(type(worker), name, None) is getattr(Worker, name) and \
            name not in getattr(worker, "__dict__", {}):
        return None
    return hook
