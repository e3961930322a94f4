"""A job that raises reaches every real client, promptly, as a failure (issue 11, part 1).

Each failure kind (the method, decode, encode, the begin and end hooks) through each client,
on both worker backends, against gearmand with Debian's defaults.
"""

from __future__ import annotations

import pytest

from tests.gearmand_util import TestClient, status_table, wait_for
from tests.interop.clients import CLIENTS, EXCEPTION_CLIENTS, Client
from tests.interop.conftest import Stack

pytestmark = pytest.mark.interop

KINDS = {
    "method": ("io.fail_method", b"x"),
    "decode": ("io.parse", b"{not json"),
    "encode": ("io.fail_encode", b"x"),
    "begin": ("io.fail_begin", b"x"),
    "end": ("io.fail_end", b"x"),
}


@pytest.mark.parametrize("client", CLIENTS, ids=str)
def test_every_failure_kind_is_a_failure(stack: Stack, client: Client) -> None:
    for kind, (function, workload) in KINDS.items():
        outcome = client.run(stack.port, function, workload)
        assert outcome.final == "fail", (kind, outcome)
        assert outcome.result == b"" and outcome.exception is None, (kind, outcome)
    # the processes survived every failure and still work
    assert client.run(stack.port, "io.parse", b'{"a": [1]}').result == b'{"got": {"a": [1]}}'


@pytest.mark.parametrize("client", EXCEPTION_CLIENTS, ids=str)
def test_a_job_that_opted_in_sends_its_exception_text(stack: Stack, client: Client) -> None:
    outcome = client.run(stack.port, "io.fail_loud", b"x", exceptions=True)
    assert outcome.final == "exception", outcome
    assert outcome.exception == b"ValueError: loud failure", outcome


def test_gearmand_does_not_retry_a_failed_job(stack: Stack) -> None:
    record = stack.dir / "record"
    record.unlink(missing_ok=True)
    with TestClient(stack.port) as client:
        client.submit_bg("io.fail_record", b"once")
        assert wait_for(lambda: status_table(stack.port)["io.fail_record"][0] == 0)
        # the same process runs the next job of its group only after the failed one is over
        assert client.submit("io.record", b"after").final == "complete"
    assert record.read_bytes() == b"once\nafter\n"
