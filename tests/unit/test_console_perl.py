"""Gearman::Driver's own console exchanges, replayed byte for byte through the command layer.

The expected texts are those of Gearman::Driver's ``t/040-live-console.t`` and the examples
in ``Gearman::Driver::Console::Basic``: operators' scripts were written against them.
"""

from __future__ import annotations

import logging

from gearman_driver.console.commands import handle_line
from tests.unit.test_console_support import Job, MemoryController, ProcessRow

LOG = logging.getLogger("test.console.perl")
PING = "Gearman::Driver::Test::Live::Console::ping"
PONG = "Gearman::Driver::Test::Live::Console::pong"


def wire(ctl: MemoryController, line: str) -> bytes:
    """What the server writes for one command: the reply lines, then ``.`` unless quit."""
    reply = handle_line(ctl, line.encode(), LOG)
    assert reply is not None
    lines = [*reply.lines, "."] if reply.terminate else list(reply.lines)
    return b"".join(f"{text}\n".encode() for text in lines)


def perl_jobs() -> MemoryController:
    return MemoryController({PING: Job(0, 1), PONG: Job(0, 1)})


EXCHANGES = [
    ("asdf", b"ERR unknown_command: asdf\n.\n"),
    ("set_min_processes asdf 5", b"ERR invalid_job_name: asdf\n.\n"),
    (f"set_min_processes {PING} ten", b"ERR invalid_value: min_processes must be >= 0\n.\n"),
    (f"set_min_processes {PING} 10",
     b"ERR invalid_value: min_processes must be smaller than max_processes\n.\n"),
    ("set_max_processes asdf 5", b"ERR invalid_job_name: asdf\n.\n"),
    (f"set_max_processes {PING} ten", b"ERR invalid_value: max_processes must be >= 0\n.\n"),
    (f"set_max_processes {PING} 5", b"OK\n.\n"),
    (f"set_min_processes {PING} 5", b"OK\n.\n"),
    (f"set_max_processes {PING} 4",
     b"ERR invalid_value: max_processes must be greater than min_processes\n.\n"),
    ("set_processes asdf 1 1", b"ERR invalid_job_name: asdf\n.\n"),
    (f"set_processes {PING} ten ten", b"ERR invalid_value: min_processes must be >= 0\n.\n"),
    (f"set_processes {PING} 1 ten", b"ERR invalid_value: max_processes must be >= 0\n.\n"),
    (f"set_processes {PING} 5 1",
     b"ERR invalid_value: max_processes must be greater than min_processes\n.\n"),
    ("kill 1", b"ERR invalid_value: the given PID(s) do not belong to us\n.\n"),
    (f"set_min_processes {PING} 0", b"OK\n.\n"),
    (f"set_max_processes {PING} 1", b"OK\n.\n"),
    ("status",
     f"{PING}  0  1  0  1970-01-01T00:00:00  1970-01-01T00:00:00  \n"
     f"{PONG}  0  1  0  1970-01-01T00:00:00  1970-01-01T00:00:00  \n.\n".encode()),
    ("killall", b"ERR invalid_value: no job_names given\n.\n"),
    (f"killall {PING}", b"OK\n.\n"),
    ("killall *", b"OK\n.\n"),
]


def test_gearman_driver_live_console_exchanges() -> None:
    ctl = perl_jobs()
    for line, expected in EXCHANGES:
        assert wire(ctl, line) == expected, line


def test_show_and_kill_as_gearman_driver() -> None:
    ctl = perl_jobs()
    ctl.jobs[PING] = Job(2, 2, [ProcessRow(3664, False, 0, None), ProcessRow(3662, True, 1, 0)])
    assert wire(ctl, f"show {PING}") == (
        f"{PING}  2  2  2  1970-01-01T00:00:00  1970-01-01T00:00:00  \n3662\n3664\n.\n".encode()
    )
    assert wire(ctl, "kill 3662") == b"OK\n.\n"
    assert ctl.stopped_pids == [3662]


def test_last_error_column_has_the_error_prefix() -> None:
    ctl = MemoryController({
        "GDExamples::Convert::convert_to_jpeg": Job(0, 5, last_run=1264797437.0),
        "GDExamples::Convert::convert_to_gif": Job(
            0, 5, last_run=1264797432.0, last_error=1264797432.0, last_error_msg="some error\n"),
    })
    assert wire(ctl, "status") == (
        b"GDExamples::Convert::convert_to_gif   0  5  0  2010-01-29T20:37:12  2010-01-29T20:37:12"
        b"  ERROR: some error\n"
        b"GDExamples::Convert::convert_to_jpeg  0  5  0  2010-01-29T20:37:17  1970-01-01T00:00:00"
        b"  \n.\n"
    )
    assert wire(ctl, "show GDExamples::Convert::convert_to_gif") == (
        b"GDExamples::Convert::convert_to_gif  0  5  0  2010-01-29T20:37:12  2010-01-29T20:37:12"
        b"  ERROR: some error\n.\n"
    )


def test_quit_closes_without_any_reply() -> None:
    reply = handle_line(perl_jobs(), b"quit", LOG)
    assert reply is not None and reply.close
    assert wire(perl_jobs(), "quit") == b""
