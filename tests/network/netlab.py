"""Hosts made of network namespaces: gearmand on "other machines" that can vanish, go silent
or be rebooted, for the network tier.

A lab is one namespace for the driver and one per gearmand host, each host joined to the
driver's namespace by its own veth pair: host i is 198.18.i.2, the driver's end 198.18.i.1
(198.18.0.0/15 is the range reserved for benchmarking; the addresses exist only inside the
lab's namespaces, which the lab creates and deletes). Both ends know each other's link-layer
address for good (permanent neighbour entries), so a link that is down swallows packets
without a word, like a host behind a router that lost power or a firewall that drops them,
instead of failing fast with "no route to host" once address resolution gives up.

- *silent* (`link_down`): the host's end of the link goes down, gearmand keeps running;
- *hard reboot* (`reboot`): link down, gearmand SIGKILLed, the host's TCP state destroyed
  (`ss -K`: a real reboot keeps none; without it the dead gearmand's kernel retransmits its
  FIN once the link is back and the worker sees a clean close, which a powered-off host never
  sends), a fresh gearmand on the same address, link up.

The test process reaches into a namespace with setns(2) on its own thread (`inside`): a
socket made there stays there. Every gearmand is started with `ip netns exec` (which execs,
so the pid is gearmand's) and stopped by pid; namespaces are named `gdnet<pid>x<n>...` and
deleted at teardown, and those of runs that died (their pid is gone) at the next start.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.gearmand_util import GEARMAND, TestClient, admin

PREFIX = "gdnet"
GEARMAND_PORT = 4730
CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)
_LABS = itertools.count(1)


def ip(*args: str) -> str:
    """Run `ip`; a failure raises with its message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the block in `namespace`'s network (this thread only); sockets made in it stay
    there after the block."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _LIBC.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        try:
            yield
        finally:
            if _LIBC.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(target)
        os.close(home)


def clean_stale() -> list[str]:
    """Delete the namespaces of earlier runs that died (their pid is gone), after killing
    what still runs in them (gearmands those runs started)."""
    removed = []
    for line in ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        digits = name[len(PREFIX):].split("x", 1)[0]
        if not name.startswith(PREFIX) or not digits.isdigit() or _alive(int(digits)):
            continue
        for pid in ip("netns", "pids", name).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        ip("netns", "del", name)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Host:
    """A gearmand host: its namespace, its end of the link, its gearmand."""

    def __init__(self, lab: Lab, index: int) -> None:
        self.lab = lab
        self.index = index
        self.ns = f"{lab.tag}g{index}"
        self.address = f"198.18.{index}.2"
        self.peer = f"198.18.{index}.1"  # the driver's end
        self.server = f"{self.address}:{GEARMAND_PORT}"
        self.link = "v0"  # the host's end, in its namespace
        self.driver_link = f"v{index}"  # the driver's end, in the driver's namespace
        self.gearmand: subprocess.Popen[bytes] | None = None
        self.gearmand_args: tuple[str, ...] = ()
        self.boots = 0

    # -- the machine -----------------------------------------------------------------------

    def create(self) -> None:
        driver_ns = self.lab.driver_ns
        ip("netns", "add", self.ns)
        ip("-n", self.ns, "link", "set", "lo", "up")
        ip("-n", driver_ns, "link", "add", self.driver_link, "type", "veth",
           "peer", "name", self.link, "netns", self.ns)
        ip("-n", driver_ns, "addr", "add", f"{self.peer}/24", "dev", self.driver_link)
        ip("-n", self.ns, "addr", "add", f"{self.address}/24", "dev", self.link)
        ip("-n", driver_ns, "link", "set", self.driver_link, "up")
        ip("-n", self.ns, "link", "set", self.link, "up")
        # permanent neighbours both ways: a link that is down is then silent, not unreachable
        ip("-n", driver_ns, "neigh", "replace", self.address, "lladdr",
           self._mac(self.ns, self.link), "dev", self.driver_link, "nud", "permanent")
        ip("-n", self.ns, "neigh", "replace", self.peer, "lladdr",
           self._mac(driver_ns, self.driver_link), "dev", self.link, "nud", "permanent")

    @staticmethod
    def _mac(namespace: str, link: str) -> str:
        words = ip("-n", namespace, "-o", "link", "show", link).split()
        return words[words.index("link/ether") + 1]

    def link_down(self) -> None:
        """Silent: nothing reaches the host and nothing comes back; gearmand runs on."""
        ip("-n", self.ns, "link", "set", self.link, "down")

    def link_up(self) -> None:
        ip("-n", self.ns, "link", "set", self.link, "up")

    def reboot(self, down_for: float = 0.0) -> None:
        """A hard reboot: no FIN, no RST, no TCP state survives (see the module docstring);
        the host is off the network for at least `down_for` seconds."""
        self.link_down()
        off = time.monotonic()
        self.kill_gearmand()
        subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-tanK"], capture_output=True,
                       check=True, timeout=30)
        self.start_gearmand(*self.gearmand_args)
        time.sleep(max(0.0, off + down_for - time.monotonic()))  # the outage itself
        self.link_up()

    # -- gearmand --------------------------------------------------------------------------

    def start_gearmand(self, *args: str) -> None:
        """gearmand on every address of the host (its namespace has only lo and the link)."""
        self.gearmand_args = args
        self.boots += 1
        name = f"gearmand-{self.index}-{self.boots}"
        cmd = ["ip", "netns", "exec", self.ns, GEARMAND, f"--port={GEARMAND_PORT}",
               "--threads=1", "--verbose=INFO", f"--log-file={self.lab.tmp / (name + '.log')}",
               f"--pid-file={self.lab.tmp / (name + '.pid')}", *args]
        self.gearmand = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            if self.gearmand.poll() is not None:
                raise RuntimeError(f"gearmand exited with {self.gearmand.returncode}: {cmd}")
            try:
                if self.admin("version", timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gearmand on {self.ns} did not answer")
            time.sleep(0.02)

    def kill_gearmand(self) -> None:
        """SIGKILL by pid, as a power loss would end it."""
        if self.gearmand is not None and self.gearmand.poll() is None:
            os.kill(self.gearmand.pid, signal.SIGKILL)
            self.gearmand.wait(10)

    def stop_gearmand(self) -> None:
        if self.gearmand is not None and self.gearmand.poll() is None:
            os.kill(self.gearmand.pid, signal.SIGTERM)
            try:
                self.gearmand.wait(5)
            except subprocess.TimeoutExpired:
                self.kill_gearmand()

    def admin(self, command: str, timeout: float = 5.0) -> list[str]:
        """An admin command from inside the host (over its loopback: link state is moot)."""
        with inside(self.ns):
            return admin(GEARMAND_PORT, command, timeout=timeout)

    def client(self, timeout: float = 30.0) -> TestClient:
        """A Gearman client on the host itself, as an application next to gearmand."""
        with inside(self.ns):
            return TestClient(GEARMAND_PORT, timeout=timeout)

    def our_processes(self, master_pid: int) -> int:
        """The driver's worker processes gearmand lists with functions registered."""
        pids = set()
        for line in self.admin("workers"):
            head, sep, functions = line.partition(" : ")
            parts = " ".join(head.split()[2:]).split(":")
            if sep and functions.strip() and len(parts) >= 4 and parts[2] == str(master_pid):
                pids.add(parts[1])
        return len(pids)


class Lab:
    """The driver's namespace and `hosts` gearmand hosts; `destroy` removes everything."""

    def __init__(self, tmp: Path, hosts: int) -> None:
        self.tmp = tmp
        self.tag = f"{PREFIX}{os.getpid()}x{next(_LABS)}"
        self.driver_ns = f"{self.tag}d"
        self.hosts = [Host(self, index) for index in range(1, hosts + 1)]
        self._created: list[str] = []

    def create(self) -> Lab:
        ip("netns", "add", self.driver_ns)
        self._created.append(self.driver_ns)
        ip("-n", self.driver_ns, "link", "set", "lo", "up")
        for host in self.hosts:
            self._created.append(host.ns)
            host.create()
        return self

    def destroy(self) -> None:
        """Stop every gearmand (by pid), delete every namespace; keeps going past failures."""
        for host in self.hosts:
            try:
                host.stop_gearmand()
            except Exception:  # noqa: BLE001 - the namespaces must go whatever happened
                host.kill_gearmand()
        for name in reversed(self._created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)

    def quiet(self, host: Host) -> bool:
        """Every connection from the driver's namespace to `host` has had all it sent
        acknowledged, as an idle worker's has: a reboot then leaves nothing that the host's
        new kernel would answer with a reset when it is sent again."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.driver_ns, "ss", "-tnoH", "state", "established",
             "dst", host.address], capture_output=True, text=True, check=True, timeout=30).stdout
        lines = [line.split() for line in out.splitlines() if line.strip()]
        return bool(lines) and all(words[1] == "0" and not any(
            word.startswith("timer:(on") for word in words) for words in lines)

    def packets(self, host: Host) -> int:
        """Packets sent and received on the driver's end of `host`'s link so far."""
        [link] = json.loads(ip("-n", self.driver_ns, "-s", "-j", "link", "show",
                               host.driver_link))
        stats = link["stats64"]
        return int(stats["rx"]["packets"]) + int(stats["tx"]["packets"])

    def console(self, command: str, port: int, timeout: float = 5.0) -> list[str]:
        """One console command to the driver (on its namespace's loopback): the reply's
        lines without the final '.' (the console frames its replies as gearmand does)."""
        with inside(self.driver_ns):
            return admin(port, command, timeout=timeout)

    def scrape(self, port: int, timeout: float = 5.0) -> dict[str, float]:
        """The driver's metrics endpoint: sample (name with labels) -> value."""
        with inside(self.driver_ns):
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        with sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        text = data.split(b"\r\n\r\n", 1)[1].decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples
