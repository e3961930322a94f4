"""The observer's pure parts: reply parsing, reply framing, peers, snapshot sums."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from gearman_driver.master import observer
from gearman_driver.master.observer import (
    FunctionStatus,
    ServerSeen,
    Snapshot,
    WorkerEntry,
    driver_peers,
    our_processes,
    parse_status,
    parse_workers,
    server_label,
    servers_summary,
)

SERVER = ("127.0.0.1", 4730)


def test_parse_status() -> None:
    lines = ["fn\t5\t2\t3", "other\t0\t0\t0", "with space\t1\t0\t1\r"]
    assert parse_status(lines) == {
        "fn": FunctionStatus("fn", 5, 2, 3),
        "other": FunctionStatus("other", 0, 0, 0),
        "with space": FunctionStatus("with space", 1, 0, 1),
    }
    assert parse_status(lines)["fn"].waiting == 3


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "fn",
        "fn\t1\t2",
        "fn\t1\t2\t3\t4",
        "fn\tx\t0\t0",
        "\t1\t0\t0",
        "fn\t-1\t0\t0",
        "ERR UNKNOWN_COMMAND Unknown+server+command",
        "fn 1 0 0",
    ],
)
def test_parse_status_skips_garbage(garbage: str) -> None:
    assert parse_status([garbage, "ok\t2\t1\t1"]) == {"ok": FunctionStatus("ok", 2, 1, 1)}


def test_parse_status_sums_repeated_function() -> None:
    assert parse_status(["f\t2\t1\t1", "f\t3\t0\t2"]) == {"f": FunctionStatus("f", 5, 1, 3)}


def test_waiting_never_negative() -> None:
    assert FunctionStatus("f", 1, 3, 0).waiting == 0


def test_parse_workers() -> None:
    lines = [
        "16 127.0.0.1 - :",
        "15 127.0.0.1 - : fn fn2",
        "17 ::1 host:1:2:Job::Name : fn",
        "18 10.0.0.1 odd id : x",
    ]
    assert parse_workers(lines, SERVER) == [
        WorkerEntry(SERVER, 16, "127.0.0.1", "-", ()),
        WorkerEntry(SERVER, 15, "127.0.0.1", "-", ("fn", "fn2")),
        WorkerEntry(SERVER, 17, "::1", "host:1:2:Job::Name", ("fn",)),
        WorkerEntry(SERVER, 18, "10.0.0.1", "odd id", ("x",)),
    ]


@pytest.mark.parametrize(
    "garbage", ["", ".", "x 127.0.0.1 - : fn", "15 127.0.0.1 - fn", "15 127.0.0.1 :", "15 :"]
)
def test_parse_workers_skips_garbage(garbage: str) -> None:
    assert parse_workers([garbage, "3 1.2.3.4 - : f"]) == [
        WorkerEntry(("", 0), 3, "1.2.3.4", "-", ("f",))
    ]


def snapshot(workers: list[WorkerEntry], functions: dict[str, FunctionStatus] | None = None,
             ) -> Snapshot:
    return Snapshot(
        taken_at=1.0,
        servers_up=(SERVER,),
        servers_down=(),
        functions=MappingProxyType(functions or {}),
        workers=tuple(workers),
    )


def worker(client_id: str, *functions: str, server: tuple[str, int] = SERVER) -> WorkerEntry:
    return WorkerEntry(server, 1, "127.0.0.1", client_id, functions)


def test_driver_peers() -> None:
    snap = snapshot(
        [
            worker("hostA:100:10:Job", "fn"),
            worker("hostA:101:10:Job", "fn"),  # same driver, other process
            worker("hostA:200:20:Other::Job", "fn2"),  # job name with colons
            worker("hostB:100:10:Job", "fn", server=("other", 4730)),
            worker("hostC:300:30:Job", "unrelated"),
            worker("-", "fn"),
            worker("some:client", "fn"),
            worker("hostD:x:30:Job", "fn"),
            worker(":1:2:Job", "fn"),
        ]
    )
    assert driver_peers(snap, ["fn"]) == {"hostA:10", "hostB:10"}
    assert driver_peers(snap, ("fn", "fn2")) == {"hostA:10", "hostA:20", "hostB:10"}
    assert driver_peers(snap, []) == set()


def test_our_processes_counts_this_drivers_processes_not_connections() -> None:
    workers = [
        worker("hostA:100:10:Job", "fn"),
        worker("hostA:100:10:Job", "fn"),  # a dead connection of the same process, not yet gone
        worker("hostA:101:10:Other::Job"),  # registered nothing (yet): still connected
        worker("hostA:200:20:Job", "fn"),  # another driver on this host
        worker("hostB:102:10:Job", "fn"),  # a driver with our pid on another host
        worker("-", "fn"),
        worker("hostA:10", "fn"),
    ]
    assert our_processes(workers, "hostA:10") == 2
    assert our_processes(workers, "hostA:20") == 1
    assert our_processes([], "hostA:10") == 0


def test_server_labels_are_as_configured() -> None:
    assert server_label(("10.0.0.1", 4730)) == "10.0.0.1:4730"
    assert server_label(("::1", 4731)) == "[::1]:4731"
    assert ServerSeen(("gm.example", 1), "down", 0, "refused").label == "gm.example:1"


def test_status_names_the_servers_that_are_down() -> None:
    one, two, three = ("10.0.0.1", 4730), ("::1", 4730), ("gm", 1)
    assert servers_summary([ServerSeen(one, "unknown", 0), ServerSeen(two, "unknown", 0)]) == ""
    assert servers_summary([ServerSeen(one, "up", 3), ServerSeen(two, "unknown", 0)]) == \
        "gearmand 1/2 up"
    assert servers_summary([ServerSeen(one, "down", 0), ServerSeen(two, "down", 0),
                            ServerSeen(three, "up", 1)]) == \
        "gearmand 1/3 up (down: 10.0.0.1:4730, [::1]:4730)"


def test_snapshot_waiting_sums_functions() -> None:
    snap = snapshot([], {"a": FunctionStatus("a", 5, 2, 2), "b": FunctionStatus("b", 1, 0, 0)})
    assert snap.waiting(["a", "b", "missing"]) == 4
    assert snap.waiting(["a", "a"]) == 3
    assert snap.waiting([]) == 0


REPLY = b"fn\t3\t1\t2\n.\n15 127.0.0.1 - : fn\n.\n"


def test_feed_whole_reply() -> None:
    poll = observer._Poll(SERVER, 0.0)
    poll.feed(REPLY)
    assert poll.done and poll.error is None
    assert poll.replies == [["fn\t3\t1\t2"], ["15 127.0.0.1 - : fn"]]


def test_feed_byte_by_byte_with_crlf() -> None:
    poll = observer._Poll(SERVER, 0.0)
    data = REPLY.replace(b"\n", b"\r\n")
    for i in range(len(data)):
        assert not poll.done
        poll.feed(data[i : i + 1])
    assert poll.done and poll.error is None
    assert poll.replies == [["fn\t3\t1\t2"], ["15 127.0.0.1 - : fn"]]


def test_feed_empty_replies() -> None:
    poll = observer._Poll(SERVER, 0.0)
    poll.feed(b".\n")
    assert not poll.done
    poll.feed(b".\n")
    assert poll.done and poll.replies == [[], []]


def test_feed_err_line_fails() -> None:
    poll = observer._Poll(SERVER, 0.0)
    poll.feed(b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n")
    assert poll.done and poll.error is not None and "UNKNOWN_COMMAND" in poll.error


def test_feed_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observer, "MAX_REPLY_BYTES", 1000)
    poll = observer._Poll(SERVER, 0.0)
    for _ in range(9):
        poll.feed(b"x" * 100)  # one endless line, never a newline
    assert not poll.done
    poll.feed(b"x" * 200)
    assert poll.done and poll.error is not None and "larger" in poll.error
