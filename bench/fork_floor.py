"""What a forked Python child costs before, and without, any code of ours: the footprint's floors.

A parent process forks 8 children and keeps still (it only reads its stdin) while they are
measured from outside, in one of three images:

- ``bare``: an interpreter that imported nothing; each child stops itself (SIGSTOP) at once.
- ``driver``: the parent imported the driver's code (the master's and the native backend's
  modules, among them logging and threading); each child stops itself at once. What the
  child holds is what CPython's fork writes: the after-fork handlers of those modules
  (threading's, logging's, random's) are the first Python code the child runs.
- ``loop``: the same image, and each child runs bench/minimal_worker's blocking loop (one
  socket, no guarantee of the driver's) until it has registered with gearmand and idles.

The parent runs as the master does before a fork: cyclic GC off, then ``gc.freeze()``.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time

from bench.common import PYTHON, ROOT, Admin, pss_mb, stopped, uss_mb
from tests.driver_util import children_of
from tests.gearmand_util import wait_for

IMAGES = ("bare", "driver", "loop")
PROCS = 8
SETTLE = 1.0
FUNCTION = "bench.minimal"
_DRIVER_CODE = "import gearman_driver.master.driver, gearman_driver.child.backends.native\n"
_PARENT = """
import gc, os, signal, sys
gc.disable()
{imports}
gc.freeze()
for _ in range({procs}):
    if os.fork() == 0:
        if {loop}:
            bench.minimal_worker.serve({port}, {function!r})
        else:
            os.kill(os.getpid(), signal.SIGSTOP)  # writes nothing more of its own
        os._exit(0)
print("forked", flush=True)
sys.stdin.read()
"""


def measure(image: str, port: int) -> dict[str, float]:
    """{"child USS", "parent RSS", "total PSS"} (MB) for `image`, one of IMAGES."""
    imports = {"bare": "", "driver": _DRIVER_CODE,
               "loop": _DRIVER_CODE + "import bench.minimal_worker\n"}[image]
    code = _PARENT.format(imports=imports, procs=PROCS, loop=image == "loop", port=port,
                          function=FUNCTION)
    proc = subprocess.Popen([PYTHON, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=str(ROOT))
    kids: list[int] = []
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        kids = children_of(proc.pid)
        if image == "loop":
            with Admin(port) as admin:
                settled = wait_for(lambda: admin.registered(FUNCTION) >= PROCS, 30, 0.02)
        else:
            settled = wait_for(lambda: all(stopped(k) for k in kids), 10, 0.01)
        if not settled:
            raise RuntimeError(f"the {image} children did not settle")
        time.sleep(SETTLE)
        return {"child USS": statistics.median(uss_mb(k) for k in kids),
                "parent RSS": pss_mb([proc.pid], "Rss"),
                "total PSS": pss_mb([proc.pid, *kids])}
    finally:
        for kid in kids or children_of(proc.pid):
            try:
                os.kill(kid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.communicate(timeout=10)

