"""The trial of new worker code, seen from the master: a framed answer is complete without the
pipe's EOF, and a reaped trial is never signalled (its pid may belong to someone else)."""

from __future__ import annotations

import json
import os
import selectors
import struct

import pytest

from gearman_driver.jobs.codestamp import CodeStamp
from gearman_driver.master import trial as trial_module
from gearman_driver.master.trial import Trial

STAMP = CodeStamp({"w.mod": ("/srv/w/mod.py", "ab12")}, {"w": ("/srv/w",)}, {"w": ("w", "w.mod")})
OK = json.dumps({"ok": True, "stamp": STAMP.as_json()})

Answers = list[tuple[str | None, CodeStamp | None]]


@pytest.fixture
def pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        try:
            os.close(fd)
        except OSError:
            pass


def make(read_fd: int, answers: Answers, deadline: float = 100.0) -> Trial:
    return Trial(4242, read_fd, deadline, 5.0, selectors.DefaultSelector(),
                 lambda error, stamp: answers.append((error, stamp)))


def frame(text: str) -> bytes:
    data = text.encode()
    return struct.pack("=I", len(data)) + data


def test_a_framed_answer_is_taken_while_a_helper_still_holds_the_pipe(
        pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    answers: Answers = []
    trial = make(read_fd, answers)
    os.write(write_fd, frame(OK)[:3])  # half of it: not yet
    trial._on_readable(selectors.EVENT_READ)
    assert answers == []
    os.write(write_fd, frame(OK)[3:])  # the write end stays open (a helper holds it)
    trial._on_readable(selectors.EVENT_READ)
    assert answers == [(None, STAMP)]  # the stamp of the code it loaded, as it was sent


def test_an_error_answer_is_one_line(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    answers: Answers = []
    trial = make(read_fd, answers)
    os.write(write_fd, frame(json.dumps({"error": "cannot import worker module x: boom\n"
                                                  "second line"})))
    trial._on_readable(selectors.EVENT_READ)
    assert answers == [("cannot import worker module x: boom second line", None)]


def test_eof_without_an_answer_says_so(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    answers: Answers = []
    trial = make(read_fd, answers)
    os.close(write_fd)
    trial._on_readable(selectors.EVENT_READ)
    assert answers == [("the trial process 4242 that loads the new worker code exited "
                        "without an answer", None)]


@pytest.mark.parametrize("reaped", [False, True])
def test_the_deadline_kills_the_group_only_while_the_trial_is_not_reaped(
        pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch, reaped: bool) -> None:
    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(trial_module.os, "killpg", lambda pgid, sig: killed.append((pgid, sig)))
    answers: Answers = []
    trial = make(pipe[0], answers, deadline=10.0)
    assert not trial.on_reaped(4243)  # another child of the master
    if reaped:
        assert trial.on_reaped(4242)
    trial.tick(11.0)
    assert killed == ([] if reaped else [(4242, 9)])
    assert answers and answers[0][0] is not None and "took longer than 5s" in answers[0][0]
