"""Usage mistakes on the command lines that talk to a running master (issue 21, item 13, and
`reload --socket ""`): exit 64 with the message on one line, never a traceback, never the
exit status 1 that for `reload` means "refused", never a silent fallback to the TCP console."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

EX_USAGE = 64

CASES = [
    ["reload", "--timeout", "nan"], ["reload", "--timeout", "inf"],
    ["reload", "--timeout", "1e400"], ["reload", "--timeout", "-1"],
    ["reload", "--timeout", "0"], ["reload", "--timeout", "soon"],
    ["reload", "--socket", ""],
]
CONSOLE_CASES = [["--timeout", "nan", "status"], ["--timeout", "1e400", "status"],
                 ["--timeout", "inf", "status"], ["--socket", "", "status"]]


def _run(module: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("args", CASES + [["console", *a] for a in CONSOLE_CASES],
                         ids=lambda a: " ".join(repr(w) if not w else w for w in a))
def test_a_bad_timeout_or_socket_is_a_usage_error(args: list[str]) -> None:
    if args[0] == "console":
        result = _run("gearman_driver.console_client", args[1:])
        prog = "gearman-driver-console: "
    else:
        result = _run("gearman_driver.cli", args)
        prog = "gearman-driver reload: "
    assert result.returncode == EX_USAGE, result.stderr
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(prog) and ("--timeout" in first or "--socket" in first), first
    assert result.stderr.splitlines()[1:2] and \
        result.stderr.splitlines()[1].startswith("usage:")  # the usage line follows
