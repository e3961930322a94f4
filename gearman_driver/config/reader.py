"""Reading the config in a short-lived process, so that the master never holds what only
reading needs.

ruamel.yaml and jsonschema (with their dependencies, some 8 MB of heap: docs/benchmarks.md,
"Footprint") are used for a moment at start-up and on each reload. Every worker process is
forked from the master and shares its heap, so whatever the master keeps, all of them carry.
A forked child reads, checks and merges the files (config.load_settings) and hands the frozen
Settings, or the one-line ConfigError, back pickled through a pipe; then it exits.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from gearman_driver.config.settings import ConfigError, Settings, load_settings

#: A reader that has not answered by then is stuck (a config path that is a FIFO, say).
READ_TIMEOUT = 60.0


def read_settings(config_files: Sequence[str],
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """load_settings(config_files, overrides), run in a child; raises its ConfigError."""
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in os._exit
        _read_and_send(wfd, rfd, config_files, overrides)
    os.close(wfd)
    chunks: list[bytes] = []
    try:
        poller = select.poll()
        poller.register(rfd, select.POLLIN)
        while True:
            if not poller.poll(READ_TIMEOUT * 1000):
                os.kill(pid, signal.SIGKILL)
                raise ConfigError(f"reading the config files took longer than "
                                  f"{READ_TIMEOUT:g} s: {', '.join(config_files)}")
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    if not chunks:
        raise RuntimeError("the process reading the config died without an answer")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "error":
        raise ConfigError(value)
    if kind == "crash":
        raise RuntimeError(f"reading the config failed:\n{value}")
    assert isinstance(value, Settings)
    return value


def _read_and_send(wfd: int, rfd: int, config_files: Sequence[str],
                   overrides: Mapping[str, Any] | None) -> None:
    code = 0
    try:
        os.close(rfd)
        result: tuple[str, Any]
        try:
            result = ("ok", load_settings(config_files, overrides))
        except ConfigError as exc:
            result = ("error", str(exc))
        except Exception:
            result = ("crash", traceback.format_exc())
        data = memoryview(pickle.dumps(result))
        while data:
            data = data[os.write(wfd, data):]
    except BaseException:
        code = 70  # EX_SOFTWARE: the parent sees no answer and says so
    finally:
        os._exit(code)
