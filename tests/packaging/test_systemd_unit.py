"""The systemd unit: `systemd-analyze verify` accepts it, and it says what the daemon relies on.

`systemd-analyze verify` checks that ExecStart= is executable, so it runs on a copy whose
ExecStart= points at the `gearman-driver` script of the environment running the tests.
It needs no systemd as PID 1 (`--man=no --generators=no`); the `systemd` package provides it.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "gearman-driver.service"
INSTALLED_EXEC = "/usr/bin/gearman-driver"


def _parse(path: Path) -> configparser.RawConfigParser:
    # strict=False: SystemCallFilter= is given twice (allow list, then deny list); the
    # parser keeps the last one, `lines_of` reads them all
    parser = configparser.RawConfigParser(strict=False, interpolation=None,
                                          delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


def lines_of(key: str) -> list[str]:
    """Every value of a key the unit sets more than once, in order."""
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
            if line.startswith(f"{key}=")]


@pytest.fixture(scope="module")
def unit() -> configparser.RawConfigParser:
    return _parse(UNIT)


def _driver_script() -> str:
    candidates = [Path(sys.executable).with_name("gearman-driver")]
    found = shutil.which("gearman-driver")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    pytest.fail("no gearman-driver script next to the test interpreter or on PATH "
                "(install the package: pip install -e .)")


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd (.ci/run does)"
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_EXEC} " in text and f"ExecReload={INSTALLED_EXEC} " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"={INSTALLED_EXEC} ", f"={_driver_script()} "))
    result = subprocess.run([analyze, "verify", "--man=no", "--generators=no", str(copy)],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # unknown keys and bad values are only warnings (exit 0), each naming the unit file
    complaints = [line for line in output.splitlines() if UNIT.name in line]
    assert not complaints, "\n".join(complaints)


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """Guard the guard: a misspelt key in a copy is reported with the unit's name."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text()
                    .replace(f"={INSTALLED_EXEC} ", f"={_driver_script()} ")
                    .replace("KillMode=mixed", "KillMode=mixed\nKilMode=mixed"))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", "--generators=no",
                             str(copy)], capture_output=True, text=True, timeout=60)
    assert "KilMode" in result.stdout + result.stderr


def test_service_is_notify_with_reload_and_graceful_stop(
        unit: configparser.RawConfigParser) -> None:
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"] == (
        "/usr/bin/gearman-driver --configfile /etc/gearman-driver/config.yml "
        "--console_socket /run/gearman-driver/console.sock")
    # waits for the outcome and fails when the new config is refused; no /bin/kill (procps)
    assert service["ExecReload"] == (
        "/usr/bin/gearman-driver reload --socket /run/gearman-driver/console.sock")
    assert service["KillMode"] == "mixed"
    # longer than the default graceful_timeout (30 s), so a job in hand can finish
    assert int(service["TimeoutStopSec"]) > 30
    assert service["Restart"] == "on-failure"
    # EX_CONFIG, EX_CANTCREAT (pid file, console socket or port): restarting would only loop
    assert service["RestartPreventExitStatus"].split() == ["78", "73"]
    assert service["WatchdogSec"] == "30"


def test_service_runs_as_its_own_user_with_its_directories(
        unit: configparser.RawConfigParser) -> None:
    service = unit["Service"]
    assert service["User"] == "gearman-driver"
    assert service["Group"] == "gearman-driver"
    assert service["RuntimeDirectory"] == "gearman-driver"  # /run/gearman-driver/console.sock
    assert service["LogsDirectory"] == "gearman-driver"     # /var/log/gearman-driver


def test_service_is_hardened(unit: configparser.RawConfigParser) -> None:
    service = unit["Service"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "PrivateUsers", "ProtectClock", "ProtectHostname", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                "RestrictNamespaces", "LockPersonality", "RestrictRealtime",
                "RestrictSUIDSGID", "RemoveIPC"):
        assert service.get(key) == "yes", key
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectProc"] == "invisible" and service["ProcSubset"] == "pid"
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
    assert service["UMask"] == "0077"
    assert service["SystemCallArchitectures"] == "native"
    assert lines_of("SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    # the exposure score is measured in the booted container (tests/system)
    assert sorted(service["RestrictAddressFamilies"].split()) == [
        "AF_INET", "AF_INET6", "AF_UNIX"]
    # Python's ctypes callbacks need writable+executable memory
    assert "MemoryDenyWriteExecute" not in service


def test_ordering_and_install(unit: configparser.RawConfigParser) -> None:
    after = unit["Unit"]["After"].split()
    assert "network-online.target" in after
    assert "gearman-job-server.service" in after
    # gearmand may run on another host: want it, don't require it
    assert "gearman-job-server.service" in unit["Unit"]["Wants"].split()
    assert "Requires" not in unit["Unit"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
