"""Real Gearman clients behind one call, so each interop test runs against every client.

Five clients nobody here wrote: the C `gearman` CLI (gearman-tools, libgearman), Perl
Gearman::Client, PHP GearmanClient (php-gearman, libgearman), python-gearman's client (the
`pygearman` package) and OpenStack's `gear`. Each `run` submits one job and reports what the
client saw as an `Outcome`; a client that hangs is cut off after TIMEOUT and reported as
"timeout", one that raises or dies as "error", so a test shows the misbehaviour instead of
hanging itself.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import gear
import gearman
from gearman.constants import PRIORITY_HIGH, PRIORITY_LOW

HERE = Path(__file__).parent
TIMEOUT = 30.0  # a real failure arrives in milliseconds; this only bounds a hang

Priority = Literal["high", "low"] | None


@dataclass
class Outcome:
    """What one client saw of one job."""

    final: str  # complete | fail | exception | queued (background) | timeout | error
    result: bytes = b""
    status: list[tuple[int, int]] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    warnings: list[bytes] = field(default_factory=list)
    exception: bytes | None = None
    detail: str = ""  # the client's own words, for assertion messages


class Client:
    """One real client; `features` says which optional packets it can show a caller."""

    name = "abstract"
    features: frozenset[str] = frozenset()

    def run(self, port: int, function: str, workload: bytes, *, background: bool = False,
            priority: Priority = None, unique: str | None = None,
            exceptions: bool = False) -> Outcome:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


def _run(cmd: list[str], workload: bytes) -> subprocess.CompletedProcess[bytes] | None:
    try:
        return subprocess.run(cmd, input=workload, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None


class GearmanCLI(Client):
    """`gearman` from gearman-tools: the result, WORK_DATA and WORK_STATUS ("50% Complete")
    on stdout, WORK_WARNING on stderr, exit status 0; "Job failed" on stderr and status 1."""

    name = "gearman-cli"
    features = frozenset({"status", "data", "warning"})

    def run(self, port: int, function: str, workload: bytes, *, background: bool = False,
            priority: Priority = None, unique: str | None = None,
            exceptions: bool = False) -> Outcome:
        assert not exceptions, "the gearman CLI cannot enable exceptions"
        cmd = ["gearman", "-h", "127.0.0.1", "-p", str(port), "-f", function]
        if background:
            cmd.append("-b")
        if priority:
            cmd.append({"high": "-I", "low": "-L"}[priority])
        if unique is not None:
            cmd += ["-u", unique]
        done = _run(cmd, workload)
        if done is None:
            return Outcome("timeout", detail=f"{cmd} did not return in {TIMEOUT} s")
        detail = f"rc={done.returncode} stderr={done.stderr!r}"
        if done.returncode == 0:
            return Outcome("queued" if background else "complete", done.stdout,
                           warnings=[done.stderr] if done.stderr else [], detail=detail)
        if b"Job failed" in done.stderr:
            return Outcome("fail", done.stdout, detail=detail)
        return Outcome("error", done.stdout, detail=detail)


def _parse_events(out: bytes, outcome: Outcome) -> None:
    """The driver scripts' lines: `status N D`, `data HEX`, `warning HEX`, `exception HEX`,
    `fail`, `complete HEX`."""
    for line in out.decode().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "status":
            numerator, denominator = rest.split()
            outcome.status.append((int(numerator), int(denominator)))
        elif kind == "data":
            outcome.data.append(bytes.fromhex(rest))
        elif kind == "warning":
            outcome.warnings.append(bytes.fromhex(rest))
        elif kind == "exception":
            outcome.exception = bytes.fromhex(rest)
            outcome.final = "exception"
        elif kind == "fail":
            outcome.final = "fail"
        elif kind == "complete":
            outcome.result = bytes.fromhex(rest)
            outcome.final = "complete"
        elif kind == "handle":
            outcome.final = "queued"


class _Script(Client):
    """A client driven by one of our scripts beside this module (client.pl, client.php)."""

    interpreter = ""
    script = ""
    options: tuple[str, ...] = ()

    def run(self, port: int, function: str, workload: bytes, *, background: bool = False,
            priority: Priority = None, unique: str | None = None,
            exceptions: bool = False) -> Outcome:
        cmd = [self.interpreter, str(HERE / self.script), f"127.0.0.1:{port}", function,
               *self.options]
        if background:
            cmd.append("--bg")
        if priority:
            cmd += ["--priority", priority]
        if unique is not None:
            cmd += ["--uniq", unique]
        if exceptions:
            cmd.append("--exceptions")
        done = _run(cmd, workload)
        if done is None:
            return Outcome("timeout", detail=f"{self.name} did not return in {TIMEOUT} s")
        outcome = Outcome("error", detail=f"rc={done.returncode} stdout={done.stdout[:500]!r} "
                                          f"stderr={done.stderr[:2000]!r}")
        if done.returncode == 0:
            _parse_events(done.stdout, outcome)
            self.check(done.stdout, outcome)
        return outcome

    def check(self, out: bytes, outcome: Outcome) -> None:
        """Cross-check the script's own summary line against the events."""


class PerlClient(_Script):
    """Gearman::Client (libgearman-client-perl): callbacks for every packet; `do_task` returns
    the result, or undef on failure."""

    name = "perl"
    features = frozenset({"status", "data", "warning", "exceptions"})
    interpreter = "perl"
    script = "client.pl"

    def check(self, out: bytes, outcome: Outcome) -> None:
        returned = out.decode().splitlines()[-1]
        if outcome.final in ("fail", "exception") and returned != "returned undef":
            outcome.final = "error"
            outcome.detail += " (failed, yet do_task did not return undef)"


class PhpClient(_Script):
    """GearmanClient (php-gearman) with a task and callbacks for every packet. php-gearman
    always enables exceptions (its exception callback sends OPTION_REQ "exceptions")."""

    name = "php"
    features = frozenset({"status", "data", "warning", "exceptions"})
    interpreter = "php"
    script = "client.php"


class PhpDoNormalClient(PhpClient):
    """GearmanClient's doNormal()/doHigh()/doLow(): what most PHP code calls; the outcome
    comes from returnCode(). It returns WORK_DATA joined to the result, drops it on a failure,
    and shows no status."""

    name = "php-doNormal"
    features: frozenset[str] = frozenset()
    options = ("--do",)


class PyGearmanClient(Client):
    """python-gearman's GearmanClient (PyPI `pygearman`): the request's state, result, data
    and warning updates, and its last status."""

    name = "python-gearman"
    features = frozenset({"status", "data", "warning"})

    def run(self, port: int, function: str, workload: bytes, *, background: bool = False,
            priority: Priority = None, unique: str | None = None,
            exceptions: bool = False) -> Outcome:
        assert not exceptions, "python-gearman's client cannot enable exceptions"
        client = gearman.GearmanClient([f"127.0.0.1:{port}"])
        try:
            request = client.submit_job(
                function.encode(), workload,
                unique=unique.encode() if unique is not None else None,
                priority={"high": PRIORITY_HIGH, "low": PRIORITY_LOW, None: None}[priority],
                background=background, wait_until_complete=not background,
                poll_timeout=TIMEOUT,
            )
        except Exception as exc:  # the misbehaviour under test, reported not raised
            return Outcome("error", detail=f"submit_job raised {type(exc).__name__}: {exc}")
        finally:
            client.shutdown()
        state = request.state
        final = {"COMPLETE": "complete", "FAILED": "fail"}.get(state, "timeout")
        if background:
            final = "queued" if state == "CREATED" else "error"
        status = request.status
        return Outcome(
            final, request.result or b"",
            status=[(int(status["numerator"]), int(status["denominator"]))] if status else [],
            data=list(request.data_updates), warnings=list(request.warning_updates),
            exception=request.exception, detail=f"state={state}",
        )


class GearClient(Client):
    """OpenStack's gear: `Job.data` collects WORK_DATA, WORK_WARNING and the result alike;
    `warning`, `failure`, `exception` and the last status are flags and fields."""

    name = "gear"
    features = frozenset({"status", "warning", "exceptions"})

    def run(self, port: int, function: str, workload: bytes, *, background: bool = False,
            priority: Priority = None, unique: str | None = None,
            exceptions: bool = False) -> Outcome:
        client = gear.Client("interop")
        try:
            client.addServer("127.0.0.1", port)
            client.waitForServer(TIMEOUT)
            if exceptions and not client.setOption("exceptions", TIMEOUT):
                return Outcome("error", detail="gearmand refused OPTION_REQ exceptions")
            job = gear.Job(function, workload, unique=unique)
            precedence = {"high": gear.PRECEDENCE_HIGH, "low": gear.PRECEDENCE_LOW,
                          None: gear.PRECEDENCE_NORMAL}[priority]
            client.submitJob(job, background=background, precedence=precedence,
                             timeout=TIMEOUT)
            if background:
                return Outcome("queued" if job.handle else "error")
            deadline = time.monotonic() + TIMEOUT
            while not job.complete and time.monotonic() < deadline:
                time.sleep(0.005)
        except Exception as exc:  # the misbehaviour under test, reported not raised
            return Outcome("error", detail=f"gear raised {type(exc).__name__}: {exc}")
        finally:
            client.shutdown()
        if not job.complete:
            return Outcome("timeout", detail="gear never saw the job end")
        parts = list(job.binary_data)
        final = "complete"
        if job.failure:
            final = "exception" if job.exception is not None else "fail"
        return Outcome(
            final, b"".join(parts),
            status=[(int(job.numerator), int(job.denominator))] if job.numerator else [],
            data=parts, warnings=[b"<warning>"] if job.warning else [],
            exception=job.exception, detail=f"data={parts[:5]!r}",
        )


CLIENTS: list[Client] = [GearmanCLI(), PerlClient(), PhpClient(), PhpDoNormalClient(),
                         PyGearmanClient(), GearClient()]
EXCEPTION_CLIENTS = [c for c in CLIENTS if "exceptions" in c.features]
