"""The Debian package end to end: build, lintian, install, check, run against gearmand, purge.

Runs as root (apt-get, a system user) on Debian bookworm; .ci/run installs the build
dependencies, lintian, gearman-job-server and gearman-tools. The installed daemon runs with
Debian's python3 and libraries, as the package's own `gearman-driver` user, not from the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gearmand_util import admin, free_port, start_gearmand, stop_gearmand, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
BUILD_DEB = ROOT / "packaging" / "build-deb"
PACKAGE = "gearman-driver"
INSTALLED = Path("/usr/bin/gearman-driver")
CONFIG = "/etc/gearman-driver/config.yml"
UPPER = "examples.workers.text.Text.upper"
# Debian's tools only: no virtualenv, pyenv or PYTHONPATH leaking into the installed daemon
SYSTEM_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}


def run(cmd: list[str], timeout: float = 300, check: bool = True,
        env: dict[str, str] | None = None, cwd: str | Path | None = None,
        ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            env=env or SYSTEM_ENV, cwd=cwd or "/", stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def installed() -> bool:
    result = run(["dpkg-query", "-W", "-f=${Status}", PACKAGE], check=False)
    return result.returncode == 0 and "install ok installed" in result.stdout


def user_exists(name: str, database: str = "passwd") -> bool:
    return run(["getent", database, name], check=False).returncode == 0


def purge() -> subprocess.CompletedProcess[str]:
    return run(["apt-get", "purge", "-y", PACKAGE], timeout=180, check=False)


@pytest.fixture(scope="module")
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("tests/packaging/test_deb.py installs a .deb and a system user: run as root")
    if not Path("/etc/debian_version").exists():
        pytest.fail("tests/packaging/test_deb.py needs Debian (bookworm or later)")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the `gearman-driver` user can read (pytest's tmp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="gearman-driver-deb-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def build(out: Path) -> Path:
    env = {**SYSTEM_ENV, "PATH": os.environ.get("PATH", SYSTEM_ENV["PATH"])}  # pip for download
    result = run(["bash", str(BUILD_DEB), str(out)], env=env, cwd=ROOT, timeout=600)
    debs = sorted(out.glob("gearman-driver_*.deb"))
    assert len(debs) == 1, f"expected one .deb in {out}: {debs}\n{result.stderr}"
    assert result.stdout.strip() == str(debs[0])
    return debs[0]


def check_contents(deb: Path) -> None:
    listing = run(["dpkg-deb", "-c", str(deb)]).stdout
    paths = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    for path in ("/usr/bin/gearman-driver", "/usr/bin/gearman-driver-console",
                 "/usr/lib/python3/dist-packages/gearman_driver/cli.py",
                 "/usr/lib/python3/dist-packages/gearman_driver/schema/config.schema.json",
                 "/usr/lib/gearman-driver/vendor/gearman/worker.py",
                 "/usr/share/gearman-driver/examples/workers/text.py",
                 "/lib/systemd/system/gearman-driver.service",
                 "/etc/gearman-driver/config.yml",
                 "/usr/share/doc/gearman-driver/copyright"):
        assert path in paths, f"{path} is not in {deb.name}"
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in paths if "/usr/lib/python3/dist-packages/gearman/" in p], (
        "pygearman belongs in the private vendor dir, not in dist-packages")
    fields = run(["dpkg-deb", "-f", str(deb), "Package", "Architecture", "Depends"]).stdout
    assert f"Package: {PACKAGE}" in fields and "Architecture: all" in fields
    assert "pygearman" not in fields  # vendored, not a (non-existent) Debian dependency


def lintian(deb: Path) -> str:
    result = run(["lintian", "--pedantic", str(deb)], check=False, timeout=300)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("E:")]
    assert not errors, output
    assert result.returncode in (0, 1), output  # 1: tags were emitted (warnings only here)
    return output


def apt_install(deb: Path) -> None:
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", str(deb)]
    result = run(cmd, timeout=300, check=False)
    if result.returncode != 0:  # stale or missing package lists on a fresh machine
        run(["apt-get", "update"], timeout=300)
        run(cmd, timeout=300)


def test_build_lintian_install_run_purge(as_root: None, tmp_path: Path,
                                         shared_dir: Path) -> None:
    deb = build(tmp_path / "out")
    check_contents(deb)
    lintian(deb)

    if installed():  # leftovers of an interrupted run: start from a clean system
        assert purge().returncode == 0
    gearmand = None
    driver: subprocess.Popen[bytes] | None = None
    try:
        apt_install(deb)
        assert installed()
        assert INSTALLED.is_file()
        assert user_exists(PACKAGE) and user_exists(PACKAGE, "group")
        assert CONFIG in run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE]).stdout
        # the installed unit, with its real ExecStart=, passes systemd's own check
        verify = run(["systemd-analyze", "verify", "--man=no", "--generators=no",
                      "/lib/systemd/system/gearman-driver.service"], check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "gearman-driver.service" not in verify.stdout + verify.stderr, verify

        # the shipped config (example workers from /usr/share/gearman-driver) is valid
        check = run([str(INSTALLED), "--check-config", "--configfile", CONFIG],
                    check=False, cwd=shared_dir)
        assert check.returncode == 0, check.stdout + check.stderr
        assert UPPER in check.stdout

        gearmand, port = start_gearmand(tmp_path / "gearmand")
        metrics_port = free_port()
        config = shared_dir / "config.yml"
        config.write_text(json.dumps({
            "namespaces": ["examples.workers"],
            "lib": ["/usr/share/gearman-driver"],
            "server": f"127.0.0.1:{port}",
            "console_port": 0,
            "metrics_port": metrics_port,
            "interval": 1,
            "graceful_timeout": 10,
            "loglevel": "DEBUG",
        }))
        config.chmod(0o644)
        log_path = shared_dir / "driver.log"
        with open(log_path, "wb") as log:
            # as the service runs it: the package's user, Debian's python3, a read-only /usr
            driver = subprocess.Popen(
                [str(INSTALLED), "--configfile", str(config)], cwd=shared_dir,
                env=SYSTEM_ENV, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                user=PACKAGE, group=PACKAGE, extra_groups=[])

        def registered() -> bool:
            assert driver is not None
            assert driver.poll() is None, f"driver exited {driver.returncode}:\n" + (
                log_path.read_text(errors="replace"))
            return any(UPPER in line.split() for line in admin(port, "workers"))

        assert wait_for(registered, timeout=15, interval=0.1), (
            "workers not registered within 15 s:\n" + "\n".join(admin(port, "workers"))
            + "\n" + log_path.read_text(errors="replace"))

        job = run(["gearman", "-h", "127.0.0.1", "-p", str(port), "-f", UPPER, "hello"],
                  timeout=30)
        assert job.stdout.strip() == "HELLO", job
        # the metrics endpoint with Debian's python3-prometheus-client (the package's Depends)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            metrics = reply.read().decode()
        done = {tuple(sorted(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(metrics)
                for sample in family.samples if sample.name == "gearman_driver_jobs_total"}
        upper = (("function", UPPER), ("job_name", UPPER))
        assert (done[(*upper, ("result", "complete"))], done[(*upper, ("result", "failed"))]) \
            == (1, 0), metrics[:3000]

        os.kill(driver.pid, signal.SIGTERM)
        code = driver.wait(timeout=40)
        assert code == 0, f"driver exited {code}:\n" + log_path.read_text(errors="replace")
        driver = None

        result = purge()
        assert result.returncode == 0, result.stdout + result.stderr
        assert not installed()
        assert not INSTALLED.exists()
        assert not Path("/etc/gearman-driver").exists()
        assert not Path("/usr/lib/gearman-driver").exists(), "byte-code left behind"
        assert not Path("/usr/share/gearman-driver").exists(), "byte-code left behind"
        assert not user_exists(PACKAGE), "purge left the gearman-driver user"
        assert not user_exists(PACKAGE, "group"), "purge left the gearman-driver group"
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(10)
        if gearmand is not None:
            stop_gearmand(gearmand)
        if installed():
            purge()
