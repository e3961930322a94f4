"""When a worker process should finish and be replaced: after so many jobs, or once it has
grown too big (a job that leaks would otherwise grow without bound).

Checked after every job, so it must cost next to nothing: the resident size is one `pread` of
/proc/self/statm on a descriptor kept open (reopened if a job closed it), no psutil.
"""

from __future__ import annotations

import errno
import os

from gearman_driver.jobs.options import MIB

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class StatmReader:
    """The resident set size of one process (this one by default), in bytes, read with one
    `pread` of its /proc/<pid>/statm on a descriptor kept open until `close`."""

    def __init__(self, pid: int | str = "self") -> None:
        self._path = f"/proc/{pid}/statm"
        self._fd = -1

    def rss(self) -> int:
        """OSError when the process is gone (or its pid now names a stranger we may not read)."""
        for _ in range(2):
            if self._fd < 0:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return int(os.pread(self._fd, 128, 0).split()[1]) * PAGE_SIZE
            except OSError as exc:
                if exc.errno != errno.EBADF:  # the process is gone (its pid may be reused)
                    os.close(self._fd)
                self._fd = -1  # (EBADF: a job closed our descriptor)
            except (ValueError, IndexError):  # a job closed it and opened another file
                self._fd = -1
        raise OSError(f"cannot read {self._path}")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Recycler:
    """Counts the jobs of one process and says when it should stop: `max_jobs` (0: never),
    `max_rss_mb` (0: never)."""

    def __init__(self, max_jobs: int, max_rss_mb: float) -> None:
        self.max_jobs = max_jobs
        self.max_rss = int(max_rss_mb * MIB)
        self.jobs = 0
        self._statm = StatmReader() if self.max_rss else None

    @property
    def active(self) -> bool:
        """False when neither limit is set: then nothing needs calling after each job."""
        return bool(self.max_jobs or self.max_rss)

    def after_job(self) -> str | None:
        """Why this process should stop now (for the log), or None to go on."""
        self.jobs += 1
        if self.max_jobs and self.jobs >= self.max_jobs:
            return f"{self.jobs} jobs done"
        if self._statm is not None:
            rss = self._statm.rss()
            if rss > self.max_rss:
                return (f"resident memory {rss / MIB:.1f} MB exceeds max_rss_mb "
                        f"{self.max_rss / MIB:g}")
        return None
