"""A booted Debian container with systemd as PID 1, driven from the host.

`systemd-nspawn --boot` on an overlay of the cached root tree (so the tree stays untouched
and a reboot keeps what was installed), with a private network (its own loopback). Commands
run inside with `nsenter` into the container's init (nspawn's child). Every container is
shut down by pid: `systemctl poweroff` inside, then SIGKILL to its init if that hangs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.gearmand_util import wait_for
from tests.system.rootfs import HOST_ENV

INSIDE_ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
              "DEBIAN_FRONTEND=noninteractive", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"]


class Container:
    """One container: `boot()`, `run()` commands in it, `poweroff()`; `destroy()` always."""

    def __init__(self, tree: Path, name: str = "gdtest") -> None:
        self.tree = tree
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix="gearman-driver-system-"))
        self.root = self.workdir / "merged"
        for sub in ("upper", "work", "merged"):
            (self.workdir / sub).mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={tree},upperdir={self.workdir / 'upper'},"
                        f"workdir={self.workdir / 'work'}", str(self.root)],
                       check=True, env=HOST_ENV, capture_output=True)
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.boots = 0

    # -- life cycle ---------------------------------------------------------------------------
    def boot(self) -> None:
        """Start the container and wait until systemd says the system is up."""
        assert self.nspawn is None
        self.boots += 1
        console = open(self.workdir / f"console-{self.boots}.log", "wb")
        env = {**HOST_ENV, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=pipe",
             "--private-network", "-M", self.name, "-D", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, env=env)
        console.close()
        assert wait_for(self._find_leader, 30), f"nspawn started no init\n{self.console_log()}"
        state = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                         timeout=60).stdout.strip()
        assert state == "running", (f"system is {state}\n" +
                                    self.run(["systemctl", "--failed"], check=False).stdout)

    def _find_leader(self) -> bool:
        assert self.nspawn is not None
        pid = self.nspawn.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children and Path(f"/proc/{children[0]}/comm").read_text().strip() == "systemd" \
                    and Path(f"/proc/{children[0]}/root/run/systemd/private").exists():
                self.leader = int(children[0])  # systemd, listening for systemctl
                return True
        except FileNotFoundError:
            pass
        return False

    def poweroff(self, timeout: float = 30) -> int | None:
        """`systemctl poweroff` inside; wait for nspawn; SIGKILL its init if it hangs."""
        if self.nspawn is None:
            return None
        if self.nspawn.poll() is None:
            try:
                subprocess.run(self._nsenter(["systemctl", "poweroff"]), env=HOST_ENV,
                               capture_output=True, timeout=30)
                self.nspawn.wait(timeout)
            except (subprocess.TimeoutExpired, AssertionError):  # hung, or no init found
                self._kill()
        code = self.nspawn.returncode
        self.nspawn = None
        self.leader = 0
        return code

    def _kill(self) -> None:
        """SIGKILL to the container's init ends its whole pid namespace, then nspawn exits."""
        assert self.nspawn is not None
        pid = self.nspawn.pid
        try:
            inits = [int(child) for child in
                     Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except FileNotFoundError:
            inits = []
        for pid in [*inits, self.nspawn.pid]:
            if pid <= 0:  # never 0 or -1: os.kill would signal our own group, or everyone
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.nspawn.wait(10)
                return
            except subprocess.TimeoutExpired:
                continue

    def destroy(self) -> None:
        """Always called (fixture finalizer): nothing keeps running, nothing stays mounted."""
        try:
            self.poweroff(timeout=15)
        finally:
            subprocess.run(["umount", str(self.root)], env=HOST_ENV, capture_output=True)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def console_log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:]
                         for p in sorted(self.workdir.glob("console-*.log")))

    # -- inside ------------------------------------------------------------------------------
    def _nsenter(self, cmd: list[str]) -> list[str]:
        assert self.leader, "the container is not running"
        return ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *INSIDE_ENV, *cmd]

    def run(self, cmd: list[str], check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside as root; `check` asserts exit 0 with its output in the message."""
        result = subprocess.run(self._nsenter(cmd), capture_output=True, text=True,
                                timeout=timeout, env=HOST_ENV, input=input,
                                stdin=None if input is not None else subprocess.DEVNULL)
        if check:
            assert result.returncode == 0, (f"{' '.join(cmd)} exited {result.returncode}\n"
                                            f"{result.stdout}\n{result.stderr}")
        return result

    def start(self, cmd: list[str]) -> subprocess.Popen[str]:
        """A long-running command inside (a client submitting jobs); the caller waits for it."""
        return subprocess.Popen(self._nsenter(cmd), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=HOST_ENV,
                                stdin=subprocess.DEVNULL)

    def path(self, inside: str) -> Path:
        """A path of the container's tree as the host sees it (to write files into it)."""
        return self.root / inside.lstrip("/")

    def show(self, unit: str, prop: str) -> str:
        return self.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()

