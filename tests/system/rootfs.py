"""The Debian bookworm root tree the system tests boot, cached between runs on one machine.

debootstrap (minbase) with systemd, gearmand and the gearman tools, plus the packages the
.deb under test depends on, downloaded but not installed: `apt-get install ./gearman-driver_*.deb`
in the booted container then pulls them as it would from the mirror, while the container runs
without a network of its own (its loopback is private, so its gearmand and console ports never
meet the host's). The tree is keyed by a hash of that package list and of this file's recipe;
it lives in CACHE_DIR, never in the repository, and is only read (containers boot on an overlay).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

CACHE_DIR = Path(os.environ.get("GEARMAN_DRIVER_TEST_CACHE", "/var/cache/gearman-driver-tests"))
SUITE = "bookworm"
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "gearman-job-server",
                 "gearman-tools")
RECIPE_VERSION = "1"  # bump when the way the tree is built changes
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive"}

# Debian's gearman-job-server unit times out inside a minimal container (it cannot open
# /var/log/gearmand.log); this one, under the same name, keeps the package's After=/Wants=
# ordering and logs to the journal.
GEARMAND_UNIT = """\
[Unit]
Description=gearmand for the system tests

[Service]
ExecStart=/usr/sbin/gearmand --listen=localhost --port=4730 --log-file=stderr --verbose=WARNING
DynamicUser=yes

[Install]
WantedBy=multi-user.target
"""


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for the main suite (deb822 or one-line)."""
    files = sorted(sources.glob("sources.list.d/*.sources")) + \
        [p for p in [sources / "sources.list", *sorted(sources.glob("sources.list.d/*.list"))]
         if p.is_file()]
    for path in files:
        text = path.read_text()
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if SUITE in fields.get("Suites", "").split() and \
                        fields.get("Enabled", "yes") != "no":
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    raise RuntimeError(f"no Debian {SUITE} mirror in {sources}/sources.list*")


def deb_relations(deb: Path) -> str:
    """The .deb's Depends and Recommends: what `apt-get install ./deb` will fetch."""
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Depends", "Recommends"],
                          capture_output=True, text=True, check=True, env=HOST_ENV).stdout


def tree_key(deb: Path) -> str:
    text = "\n".join([RECIPE_VERSION, SUITE, *BASE_PACKAGES, GEARMAND_UNIT, deb_relations(deb)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run(cmd: list[str], log: Path, timeout: float) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=HOST_ENV,
                                stdin=subprocess.DEVNULL, timeout=timeout)
    if result.returncode != 0:
        tail = log.read_text().splitlines()[-30:]
        raise RuntimeError(f"{' '.join(cmd[:3])} … exited {result.returncode}\n" +
                           "\n".join(tail))


def _build(tree: Path, deb: Path, log: Path) -> None:
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
          str(tree), debian_mirror()], log, timeout=600)
    _run(["chroot", str(tree), "apt-get", "clean"], log, timeout=60)
    shutil.copy(deb, tree / "tmp" / deb.name)
    _run(["chroot", str(tree), "apt-get", "install", "--download-only", "-y",
          f"/tmp/{deb.name}"], log, timeout=300)
    (tree / "tmp" / deb.name).unlink()
    (tree / "etc/systemd/system/gearman-job-server.service").write_text(GEARMAND_UNIT)
    # the container's network is its own loopback: no DNS; localhost as any installer writes it
    (tree / "etc/resolv.conf").write_text("")
    (tree / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost "
                                    "ip6-loopback\n")


def cached_tree(deb: Path) -> tuple[Path, float]:
    """The tree for this .deb's dependencies (built if missing) and the seconds spent building."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tree = CACHE_DIR / f"rootfs-{SUITE}-{tree_key(deb)}"
    with open(CACHE_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time on this machine
        if tree.is_dir():
            return tree, 0.0
        started = time.monotonic()
        partial = CACHE_DIR / f"{tree.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        log = CACHE_DIR / f"{tree.name}.log"
        log.write_text("")
        _build(partial, deb, log)
        partial.rename(tree)
        for old in CACHE_DIR.glob(f"rootfs-{SUITE}-*"):  # trees of older package lists
            if old != tree and re.fullmatch(rf"rootfs-{SUITE}-[0-9a-f]{{16}}", old.name):
                shutil.rmtree(old, ignore_errors=True)
        return tree, time.monotonic() - started
