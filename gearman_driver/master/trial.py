"""Trying new worker code in a throw-away process before a reload touches anything.

A reload that needs new worker objects (new `namespaces` or `lib`, worker code changed on disk,
new `worker_options`) first forks a trial process. It forgets the worker modules the master
imported, imports the namespaces from disk as a fresh master would, builds every worker object,
applies `job_runtime_attributes`, and writes one line back over a pipe: `ok`, or the error.
The pipe is in the master's selector, so the loop keeps turning (console, signals, scaling)
while the trial runs; a trial still running after its time limit is killed and the reload
refused. Only a trial that answered `ok` lets the reload drain or replace processes; its
answer carries the stamp of the code it loaded (jobs/codestamp.py), which the master checks
again right before it re-executes itself.

The verdict never depends on processes the worker code starts: the answer is framed (its
length first), so it is complete without waiting for an EOF that a helper process holding the
pipe would delay forever; the trial leads a process group of its own and kills the whole group
(itself and whatever the worker code forked at import) once it has answered, and the master
kills that group at the deadline, only while the trial is not yet reaped, so that a pid (or
process group id) reused since is never signalled.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import selectors
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

from gearman_driver.child.process import set_parent_death_signal
from gearman_driver.config.reading import single_line
from gearman_driver.config.settings import ConfigError, Settings
from gearman_driver.jobs.codestamp import CodeStamp, stamp
from gearman_driver.jobs.loader import load_configured
from gearman_driver.jobs.table import LoadError
from gearman_driver.logs import set_process_context
from gearman_driver.master.processes import FORK_SIGNALS

log = logging.getLogger("gearman_driver.reload")

OK = "ok"
#: The longest answer read from a trial: the stamp of what it loaded (a few hundred bytes a
#: module) or an error line.
MAX_ANSWER = 16 * 1024 * 1024

#: Called once with (None, the stamp of the code it loaded), or (the one-line reason the new
#: code does not load, None).
Done = Callable[[str | None, CodeStamp | None], None]


_LENGTH = struct.Struct("=I")  # the answer's length, before it


class Trial:
    """One trial process, seen from the master: its pid, the read end of its pipe, a deadline."""

    def __init__(self, pid: int, fd: int, deadline: float, limit: float,
                 selector: selectors.BaseSelector, done: Done) -> None:
        self.pid, self.fd, self.deadline, self.limit = pid, fd, deadline, limit
        self._selector, self._done = selector, done
        self._answer = b""
        self.reaped = False  # the master's reaper collected it: its pid may be reused
        selector.register(fd, selectors.EVENT_READ, self._on_readable)

    def _on_readable(self, mask: int) -> None:
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        self._answer += chunk
        answer = self._framed()
        if answer is None and chunk and len(self._answer) <= MAX_ANSWER + _LENGTH.size:
            return  # more to come
        self._finish()
        try:
            verdict = json.loads(answer) if answer is not None else {}
        except ValueError:
            verdict = {}
        if verdict.get(OK):
            self._done(None, CodeStamp.from_json(verdict["stamp"]))
        else:
            error = single_line(str(verdict.get("error", "")))
            self._done(error or f"the trial process {self.pid} that loads the new worker code "
                                f"exited without an answer", None)

    def _framed(self) -> str | None:
        """The whole answer once it is in, else None."""
        if len(self._answer) < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack_from(self._answer)
        if len(self._answer) < _LENGTH.size + size:
            return None
        return self._answer[_LENGTH.size:_LENGTH.size + size].decode("utf-8", "replace")

    def tick(self, now: float) -> None:
        """Past the deadline: kill the trial and what it started, refuse the reload."""
        if now < self.deadline:
            return
        self.kill()
        self._done(f"loading the new worker code took longer than {self.limit:g}s "
                   f"(graceful_timeout); trial process {self.pid} killed", None)

    def kill(self) -> None:
        """Stop the trial now (deadline, master exiting); its answer is no longer wanted.
        Its process group is killed only while the trial is not reaped: until then its pid,
        which is the group's id, cannot belong to anyone else."""
        if self.fd < 0:
            return
        if not self.reaped:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._finish()

    def on_reaped(self, pid: int) -> bool:
        """The master reaped `pid`: True if it was this trial (then it is never signalled)."""
        if pid != self.pid:
            return False
        self.reaped = True
        return True

    def close_in_child(self) -> None:
        """In a freshly forked worker process: the pipe is the master's."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _finish(self) -> None:
        self._selector.unregister(self.fd)
        os.close(self.fd)
        self.fd = -1


def start_trial(old: Settings, new: Settings, selector: selectors.BaseSelector,
                close_inherited: Callable[[], None], done: Done) -> Trial:
    """Fork the trial of `new`'s worker code; `done` is called from the master's loop."""
    limit = float(new.graceful_timeout)
    read_fd, write_fd = os.pipe()
    for handler in logging.getLogger().handlers:
        handler.flush()
    master = os.getpid()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _run_trial(master, old, new, write_fd, close_inherited)
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    finally:
        if os.getpid() == master:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    log.info("trying the new worker code in process %d (at most %gs)", pid, limit)
    return Trial(pid, read_fd, time.monotonic() + limit, limit, selector, done)


def _run_trial(master: int, old: Settings, new: Settings, write_fd: int,
               close_inherited: Callable[[], None]) -> NoReturn:
    """The trial process: never returns into the master's code."""
    answer = "the trial process failed before loading anything"
    try:
        os.setpgid(0, 0)  # a group of its own: what the worker code forks is killed with it
        for signum in FORK_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_SIGNALS)
        set_parent_death_signal(master, signal.SIGKILL)
        close_inherited()
        set_process_context(f"reload trial[{os.getpid()}]")
        _forget_worker_code(old, new)
        load_configured(new)
        answer = json.dumps({OK: True, "stamp": stamp(new.namespaces, new.lib).as_json()})
    except (ConfigError, LoadError) as exc:
        answer = json.dumps({"error": str(exc)})
    except BaseException as exc:  # worker code may raise anything, SystemExit included
        cause = traceback.format_exception_only(type(exc), exc)[-1].strip()
        answer = json.dumps({"error": f"loading the new worker code failed: {cause}"})
    try:
        data = answer.encode("utf-8", "replace")[:MAX_ANSWER]
        frame = memoryview(_LENGTH.pack(len(data)) + data)
        while frame:
            frame = frame[os.write(write_fd, frame):]
    finally:
        try:
            os.killpg(0, signal.SIGKILL)  # this process and every helper the code started
        finally:
            os._exit(0)


def _forget_worker_code(old: Settings, new: Settings) -> None:
    """Drop what the master imported from the namespaces and lib directories (old and new), so
    that they are imported from disk again, as the re-executed master will."""
    roots = {*old.namespaces, *new.namespaces}
    dirs = [os.path.realpath(d) + os.sep for d in {*old.lib, *new.lib}]
    for name, module in list(sys.modules.items()):
        if name == "gearman_driver" or name.startswith("gearman_driver."):
            continue
        path = os.path.realpath(getattr(module, "__file__", None) or "/")
        if any(name == root or name.startswith(root + ".") for root in roots) or \
                any(path.startswith(d) for d in dirs):
            del sys.modules[name]
    for directory in old.lib:
        if directory not in new.lib and directory in sys.path:
            sys.path.remove(directory)
    importlib.invalidate_caches()
