"""The runner of a job whose processes hold several jobs at once (`concurrency`, `async def`).

runner.py's make_runner for one slot, split so that the scoreboard and the connection stay the
slots backend's (child/backends/slots.py, the loop thread): `SlotCall.run` runs a plain
method's job in a thread of the pool, `SlotCall.run_async` an `async def` method's as a task of
the process's event loop, cancelled past the job's timeout. decode, the hooks, encode and the
failures keep make_runner's meaning, per job. Imported only by such a job's processes (and by
their master, once, before it forks them): asyncio costs a process about 7 MB.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from gearman_driver import journal
from gearman_driver.child.backends import GearmanJob, JobResult
from gearman_driver.child.runner import to_result_bytes, worker_hook
from gearman_driver.jobs.table import JobSpec, MethodSpec
from gearman_driver.scoreboard import function_slot

log = logging.getLogger("gearman_driver.child")


class SlotCall:
    """One function of the job: its outcome as the JobResult the client gets, with the error
    text for the scoreboard."""

    def __init__(self, spec: JobSpec, method: MethodSpec, index: int = 0) -> None:
        self.function = method.function
        self.index = function_slot(index)
        self.is_async = method.is_async
        self.timeout = spec.timeout
        self._method = method
        self._begin, self._end = worker_hook(spec.worker, "begin"), worker_hook(spec.worker, "end")

    def run(self, job: GearmanJob) -> tuple[JobResult, str | None]:
        """A plain method, in a thread of the pool."""
        token = journal.job_context.set((self.function, job.handle))
        try:
            method = self._method
            workload = method.decode(job.workload) if method.decode else job.workload
            if self._begin is not None:
                self._begin(job, workload)
            try:
                result = method.body(job, workload)
            finally:
                if self._end is not None:
                    self._end(job, workload)
            return self._complete(result), None
        except BaseException as exc:  # as make_runner: the job fails, the process goes on
            return self._failed(job, exc)
        finally:
            journal.job_context.reset(token)

    async def run_async(self, job: GearmanJob) -> tuple[JobResult, str | None]:
        """An `async def` method, as a task of the loop; cancelled past the job's timeout."""
        journal.job_context.set((self.function, job.handle))  # the task's own context
        method = self._method
        deadline = asyncio.timeout(self.timeout)  # None: no limit
        try:
            workload = method.decode(job.workload) if method.decode else job.workload
            if self._begin is not None:
                await _maybe_await(self._begin(job, workload))
            try:
                async with deadline:
                    result = await method.body(job, workload)
            finally:
                if self._end is not None:
                    await _maybe_await(self._end(job, workload))
            return self._complete(result), None
        except TimeoutError as exc:
            if deadline.expired():
                return self.timed_out(job)
            return self._failed(job, exc)  # the job's own, e.g. a socket's time-out
        except BaseException as exc:  # CancelledError too: the job did not complete
            return self._failed(job, exc)

    def timed_out(self, job: GearmanJob) -> tuple[JobResult, str]:
        """The job ran past its timeout: it fails (a thread's job is abandoned, not stopped)."""
        error = f"timed out after {self.timeout:g}s"
        log.error("job %s (handle %s) failed: %s", self.function,
                  job.handle.decode("ascii", "replace"), error)
        return JobResult("fail"), error

    def _complete(self, result: Any) -> JobResult:
        if self._method.encode:
            result = self._method.encode(result)
        if type(result) is not bytes:
            result = to_result_bytes(self.function, result)
        return JobResult("complete", result)

    def _failed(self, job: GearmanJob, exc: BaseException) -> tuple[JobResult, str]:
        error = f"{type(exc).__name__}: {exc}"
        log.error("job %s (handle %s) failed: %s", self.function,
                  job.handle.decode("ascii", "replace"), error, exc_info=exc)
        if self._method.exceptions:
            return JobResult("exception", error.encode("utf-8", "replace")), error
        return JobResult("fail"), error


async def _maybe_await(value: Any) -> Any:
    """A hook may be a coroutine function for an async job: wait for it then."""
    if inspect.isawaitable(value):
        return await value
    return value
