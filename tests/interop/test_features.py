"""Real clients use the daemon's jobs as they use any Gearman worker (issue 11, part 2).

Results byte for byte, background jobs, priorities, unique ids, status/data/warning, and
gearmand's worker counts against the console's, on both backends.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from gearman_driver.console.client import query
from tests.gearmand_util import TestClient, status_table, wait_for
from tests.interop.clients import CLIENTS, Client, Outcome
from tests.interop.conftest import PROCESSES, Stack

pytestmark = pytest.mark.interop

PAYLOADS = {
    "ascii": b"hello, gearman",
    "utf8": "grüße, 世界, 🙂".encode(),
    "nul": b"\0a\0\0b\0",
    "empty": b"",
    "10MB": bytes(range(256)) * (10 * 1024 * 1024 // 256),
}


# Two limits of the clients themselves, whatever the worker (measured with a raw one): the C
# CLI reads its stdin so slowly that 4 MB take 10 s and 10 MB over a minute, and php-gearman
# refuses an empty workload (add_task: GEARMAN_INVALID_ARGUMENT "invalid workload").
CANNOT = {("gearman-cli", "10MB"), ("php", "empty"), ("php-doNormal", "empty")}
BYTE_CASES = [
    pytest.param(client, payload, id=f"{client}-{payload}")
    for client in CLIENTS for payload in PAYLOADS if (client.name, payload) not in CANNOT
]


@pytest.mark.parametrize(("client", "payload"), BYTE_CASES)
def test_results_are_byte_exact(stack: Stack, client: Client, payload: str) -> None:
    workload = PAYLOADS[payload]
    outcome = client.run(stack.port, "io.echo", workload)
    assert outcome.final == "complete", outcome.detail
    assert outcome.result == workload, (len(outcome.result), len(workload))


@contextmanager
def serial_process_held(stack: Stack) -> Iterator[None]:
    """Keep the fixture's one `serial` process busy, so its jobs queue up until we leave."""
    gate = f"gate-{uuid.uuid4().hex}"
    (stack.dir / "record").unlink(missing_ok=True)
    with TestClient(stack.port) as client:
        client.submit_bg("io.hold", gate.encode())
    assert wait_for(lambda: status_table(stack.port)["io.hold"][1] == 1)
    try:
        yield
    finally:
        (stack.dir / gate).touch()


def recorded(stack: Stack, lines: int) -> list[bytes]:
    """The `record` file once it has `lines` lines."""
    path = stack.dir / "record"
    assert wait_for(lambda: path.exists() and path.read_bytes().count(b"\n") >= lines)
    return path.read_bytes().splitlines()


@pytest.mark.parametrize("client", CLIENTS, ids=str)
def test_background_jobs_run_high_before_normal_before_low(stack: Stack, client: Client
                                                           ) -> None:
    with serial_process_held(stack):
        for priority in ("low", None, "high"):  # submitted in the wrong order on purpose
            outcome = client.run(stack.port, "io.record", (priority or "normal").encode(),
                                 background=True, priority=priority)
            assert outcome.final == "queued", outcome
        assert status_table(stack.port)["io.record"][0] == 3
    assert recorded(stack, 3) == [b"high", b"normal", b"low"]


def total(stack: Stack, function: str) -> int:
    return status_table(stack.port).get(function, (0, 0, 0))[0]


@pytest.mark.parametrize("client", CLIENTS, ids=str)
def test_jobs_with_the_same_unique_id_run_once(stack: Stack, client: Client) -> None:
    unique = f"u-{uuid.uuid4().hex}"
    outcomes: list[Outcome] = []
    thread = threading.Thread(target=lambda: outcomes.append(
        client.run(stack.port, "io.coalesce", b"first", unique=unique)))
    with TestClient(stack.port) as other:
        with serial_process_held(stack):
            thread.start()
            assert wait_for(lambda: total(stack, "io.coalesce") == 1)
            second = other.start("io.coalesce", b"second", unique.encode())
            assert total(stack, "io.coalesce") == 1  # joined to the queued job
        assert other.finish(second).result == b"first"
    thread.join()
    assert outcomes[0].final == "complete" and outcomes[0].result == b"first", outcomes[0]
    assert recorded(stack, 1) == [b"first"]


WARNING = "careful é".encode()


@pytest.mark.parametrize("client", CLIENTS, ids=str)
def test_status_data_and_warning_reach_the_client(stack: Stack, client: Client) -> None:
    """io.progress sends status 1/2, data, a warning, status 2/2, then "done"; each client
    shows what it can."""
    check_progress(client, client.run(stack.port, "io.progress", b"go"))


def check_progress(client: Client, outcome: Outcome) -> None:
    """What each client shows of status 1/2, data, a warning, status 2/2, then "done"."""
    assert outcome.final == "complete", outcome
    if client.name == "gearman-cli":  # everything on stdout but the warning
        for part in (b"part\0one", b"done", b"50% Complete\n", b"100% Complete\n"):
            assert part in outcome.result, outcome
        assert outcome.warnings == [WARNING], outcome
    elif client.name == "php-doNormal":  # WORK_DATA joins the result; no status shown
        assert outcome.result == b"part\0onedone" and outcome.status == [], outcome
    elif client.name == "gear":  # data, warning and result all land in Job.data
        assert outcome.data == [b"part\0one", WARNING, b"done"], outcome
        assert outcome.warnings and outcome.status == [(2, 2)], outcome
    else:
        assert outcome.result == b"done", outcome
        expected_status = [(1, 2), (2, 2)]
        if client.name == "python-gearman":
            expected_status = [(2, 2)]  # it keeps the last status only
        assert outcome.status == expected_status, outcome
        if "data" in client.features:
            assert outcome.data == [b"part\0one"], outcome
        if "warning" in client.features:
            assert outcome.warnings == [WARNING], outcome


def gearadmin_workers(port: int) -> dict[str, int]:
    """Available workers per function, as `gearadmin --status` prints them."""
    out = subprocess.run(["gearadmin", "-h", "127.0.0.1", "-p", str(port), "--status"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.count("\t") == 3]
    return {row[0]: int(row[3]) for row in rows}


def console_processes(stack: Stack) -> dict[str, int]:
    """Processes per function, from the console's `status` (a job's count for each of its
    functions; the `serial` group's functions share its processes)."""
    rows = {line.split()[0]: int(line.split()[3])
            for line in query(f"127.0.0.1:{stack.console_port}", "status", timeout=5)}
    return {function: rows["io.serial" if function in SERIAL else function]
            for function in PROCESSES}


SERIAL = {"io.hold", "io.record", "io.fail_record", "io.coalesce"}


def test_gearadmin_counts_the_console_processes(stack: Stack) -> None:
    def agree(echo: int) -> bool:
        console = console_processes(stack)
        return console["io.echo"] == echo and console == {
            function: gearadmin_workers(stack.port).get(function, 0) for function in PROCESSES}

    assert agree(2), (console_processes(stack), gearadmin_workers(stack.port))
    address = f"127.0.0.1:{stack.console_port}"
    try:
        assert query(address, "set_processes io.echo 3 3", timeout=5) == ["OK"]
        assert wait_for(lambda: agree(3), timeout=30), gearadmin_workers(stack.port)
    finally:
        assert query(address, "set_processes io.echo 2 2", timeout=5) == ["OK"]
    assert wait_for(lambda: agree(2), timeout=30), gearadmin_workers(stack.port)
