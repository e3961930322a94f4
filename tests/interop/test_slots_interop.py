"""Jobs of several slots reach every real client as any job does (issue 24): results byte for
byte, status/data/warning, and every failure kind as a failure (an exception text for clients
that opted in), from async tasks and from threads. Native backend only: slots need it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.driver_util import DriverProcess
from tests.gearmand_util import start_gearmand, stop_gearmand
from tests.interop.clients import CLIENTS, EXCEPTION_CLIENTS, Client
from tests.interop.test_features import PAYLOADS, check_progress

pytestmark = pytest.mark.interop

KINDS = ("ia", "it")
FAILURES = {
    "method": ("fail_method", b"x"),
    "decode": ("parse", b"{not json"),
    "encode": ("fail_encode", b"x"),
}
HOOK_FAILURES = {"ia.fail_begin": b"x", "it.fail_end": b"x"}


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("interop-slots")
    gearmand, gearmand_port = start_gearmand(tmp / "gearmand", "--threads=4")
    driver = DriverProcess(tmp, gearmand_port, {"namespaces": ["tw.interop_slots"],
                                                "loglevel": "INFO", "interval": 0}).start()
    try:
        for function in ("ia.echo", "it.echo", "ia.fail_begin", "it.fail_end", "ia.hooked"):
            assert driver.wait_registered(function, 1, timeout=30), driver.log()[-3000:]
        yield gearmand_port
    finally:
        driver.stop()
        stop_gearmand(gearmand)


@pytest.mark.parametrize("client", CLIENTS, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_results_progress_and_failures_from_slots(port: int, client: Client,
                                                  kind: str) -> None:
    for name in ("ascii", "utf8", "nul"):
        outcome = client.run(port, f"{kind}.echo", PAYLOADS[name])
        assert (outcome.final, outcome.result) == ("complete", PAYLOADS[name]), outcome
    check_progress(client, client.run(port, f"{kind}.progress", b"go"))
    for failure, (function, workload) in FAILURES.items():
        outcome = client.run(port, f"{kind}.{function}", workload)
        assert outcome.final == "fail", (failure, outcome)
        assert outcome.result == b"" and outcome.exception is None, (failure, outcome)
    parsed = client.run(port, f"{kind}.parse", b'{"a": [1]}')
    assert parsed.result == b'{"got": {"a": [1]}}', parsed


@pytest.mark.parametrize("client", CLIENTS, ids=str)
def test_a_failing_hook_fails_the_job(port: int, client: Client) -> None:
    for function, workload in HOOK_FAILURES.items():
        outcome = client.run(port, function, workload)
        assert outcome.final == "fail" and outcome.result == b"", (function, outcome)


@pytest.mark.parametrize("client", EXCEPTION_CLIENTS, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_a_slot_job_that_opted_in_sends_its_exception_text(port: int, client: Client,
                                                           kind: str) -> None:
    outcome = client.run(port, f"{kind}.fail_loud", b"x", exceptions=True)
    assert outcome.final == "exception", outcome
    assert outcome.exception == b"ValueError: loud failure", outcome


def test_hooks_run_around_each_job_of_its_own(port: int) -> None:
    from tests.interop.clients import CLIENTS as ALL

    python = next(c for c in ALL if c.name == "python-gearman")
    outcome = python.run(port, "ia.hooked", b"x")
    assert outcome.result == b"begin method end-next", outcome
