"""The scoreboard: what a child writes is what the master reads, across a fork."""

from __future__ import annotations

import os
import struct

from gearman_driver.scoreboard import ERROR_BYTES, HANDLE_BYTES, MAX_SERVERS, Scoreboard, State


def test_child_writes_are_seen_by_the_master_after_fork() -> None:
    board = Scoreboard(4)
    slot = board.allocate()
    assert board.read(slot).state == State.STARTING
    pid = os.fork()
    if pid == 0:
        writer = board.child_writer(slot)
        writer.ready(os.getpid())
        writer.set_registered(2)
        writer.job_started(b"H:host:7")
        writer.job_finished("ValueError: bad\nworkload")
        writer.job_started(b"H:host:8")
        os._exit(0)
    os.waitpid(pid, 0)
    view = board.read(slot)
    assert (view.pid, view.state, view.registered, view.jobs_done) == (pid, State.BUSY, 2, 1)
    assert view.handle == "H:host:8"
    assert view.last_error_msg == "ValueError: bad workload"  # newlines folded
    assert view.last_job_end > 0 and view.busy


def test_slots_are_reused_and_long_errors_truncated() -> None:
    board = Scoreboard(2)
    first, second = board.allocate(), board.allocate()
    writer = board.child_writer(first)
    writer.ready(10)
    writer.job_finished("x" * 1000)
    assert len(board.read(first).last_error_msg) == ERROR_BYTES
    board.release(first)
    assert board.read(first).state == State.FREE
    assert board.allocate() == first
    assert second != first


def test_a_job_is_in_hand_until_its_result_is_sent() -> None:
    """The master backs off a process that died before its result reached gearmand: the
    slot stays BUSY after the job's code ends, and says whether the result went out."""
    board = Scoreboard(1)
    slot = board.allocate()
    writer = board.child_writer(slot)
    writer.ready(10)
    writer.job_started(b"H:1")
    writer.job_finished()
    view = board.read(slot)
    assert (view.state, view.jobs_done, view.delivered) == (State.BUSY, 1, 0)
    writer.result_sent(True)
    view = board.read(slot)
    assert (view.state, view.delivered) == (State.IDLE, 1)
    writer.job_started(b"H:2")
    writer.job_finished()
    writer.result_sent(False)
    view = board.read(slot)
    assert (view.state, view.jobs_done, view.delivered, view.handle) == (State.LOST, 2, 1, "H:2")
    assert not view.busy


def test_a_long_handle_is_cut_and_the_sequence_wraps_without_a_torn_read() -> None:
    """gearmand's handles fit HANDLE_BYTES; a longer one is cut, never written past its
    field. The sequence counter is 32 bits: the child's writes carry on across its wrap."""
    board = Scoreboard(1)
    slot = board.allocate()
    board._write(slot, 10, State.IDLE, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, b"", b"")
    struct.pack_into("=I", board._mem, 0, 0xFFFFFFFE)  # the next write wraps
    writer = board.child_writer(slot)
    writer.job_started(b"H:" + b"9" * 100)
    view = board.read(slot)
    assert view.handle == ("H:" + "9" * 100)[:HANDLE_BYTES] and view.state == State.BUSY
    writer.job_finished()
    writer.result_sent(True)
    assert struct.unpack_from("=I", board._mem, 0)[0] == 4  # even: no write in progress
    view = board.read(slot)
    assert (view.state, view.jobs_done, view.delivered, view.pid) == (State.IDLE, 1, 1, 10)


def test_reconnects_are_counted_per_server_index_and_start_from_zero() -> None:
    board = Scoreboard(2)
    slot = board.allocate()
    pid = os.fork()
    if pid == 0:
        writer = board.child_writer(slot)
        writer.ready(os.getpid())
        for index in (0, 2, 2, MAX_SERVERS - 1, MAX_SERVERS):  # past the last: not counted
            writer.reconnected(index)
        os._exit(0)
    os.waitpid(pid, 0)
    counts = board.reconnects(slot)
    assert len(counts) == MAX_SERVERS
    assert (counts[0], counts[1], counts[2], counts[-1], sum(counts)) == (1, 0, 2, 1, 4)
    board.release(slot)
    assert board.allocate() == slot and sum(board.reconnects(slot)) == 0
