"""The console's commands as pure functions: formats and the exact Gearman::Driver wording."""

from __future__ import annotations

import logging

import pytest

from gearman_driver.console.commands import COMMANDS, Reply, handle_line
from gearman_driver.console.replies import JobRow, format_processes, format_status, iso_utc
from tests.unit.test_console_support import MemoryController, ProcessRow

LOG = logging.getLogger("test.console")

STATUS = [
    "My::Workers::One::do_something_else  2   5  1  2026-11-28T10:00:00  1970-01-01T00:00:00  ",
    "My::Workers::Two::scale_image        1  15  2  2026-11-28T10:00:00  2026-11-28T10:01:01"
    "  ERROR: db gone reconnect failed",
    "a                                    0   1  0  1970-01-01T00:00:00  1970-01-01T00:00:00  ",
]
SHOW_A = "a  0  1  0  1970-01-01T00:00:00  1970-01-01T00:00:00  "


def run(ctl: MemoryController, line: str) -> list[str]:
    reply = handle_line(ctl, line.encode(), LOG)
    assert reply is not None
    return list(reply.lines)


def test_status_exact_sorted_and_padded() -> None:
    assert run(MemoryController(), "status") == STATUS


def test_status_parses_with_split_maxsplit_6() -> None:
    lines = format_status(MemoryController().job_rows())
    fields = [line.split(maxsplit=6) for line in lines]
    assert fields[1][6] == "ERROR: db gone reconnect failed"
    assert [len(f) for f in fields] == [6, 7, 6]


def test_status_folds_every_line_break_and_control_char() -> None:
    row = JobRow("j", 0, 1, 0, 0.0, 1.0, "a\r\nb\x0bc\x1b[31m\u2028.\n")
    (line,) = format_status([row])
    assert line.split(maxsplit=6)[6] == "ERROR: a  b c [31m ."
    assert "\n" not in line and "\x1b" not in line


def test_status_of_no_jobs_is_empty() -> None:
    assert run(MemoryController({}), "status") == []


@pytest.mark.parametrize(
    ("epoch", "text"),
    [(0.0, "1970-01-01T00:00:00"), (1795860000.9, "2026-11-28T10:00:00"),
     (-5.0, "1970-01-01T00:00:00"), (1e300, "1970-01-01T00:00:00"),
     (float("nan"), "1970-01-01T00:00:00")],
)
def test_iso_utc(epoch: float, text: str) -> None:
    assert iso_utc(epoch) == text


def test_show_is_the_unpadded_status_line_then_bare_pids() -> None:
    ctl = MemoryController()
    assert run(ctl, "show My::Workers::Two::scale_image") == [
        "My::Workers::Two::scale_image  1  15  2  2026-11-28T10:00:00  2026-11-28T10:01:01"
        "  ERROR: db gone reconnect failed",
        "815",
        "4711",
    ]
    assert run(ctl, "show a") == [SHOW_A]


def test_servers_lists_each_server_its_state_and_our_processes() -> None:
    ctl = MemoryController()
    lines = run(ctl, "servers")
    assert lines == [
        "198.18.1.2:4730            up       12",
        "gearmand-two.example:4730  down     0",
        "[2001:db8::7]:4731         unknown  0",
    ]
    assert [line.split() for line in lines] == [  # what a script reads
        ["198.18.1.2:4730", "up", "12"], ["gearmand-two.example:4730", "down", "0"],
        ["[2001:db8::7]:4731", "unknown", "0"]]
    assert run(ctl, "servers all") == ["ERR invalid_value: usage: servers"]
    ctl.servers = []
    assert run(ctl, "servers") == []


def test_ps_lists_state_jobs_done_and_idle_seconds() -> None:
    ctl = MemoryController()
    assert run(ctl, "ps My::Workers::Two::scale_image") == [
        " 815  idle     7  -",
        "4711  busy  1234  3",
    ]
    assert run(ctl, "ps a") == []
    assert run(ctl, "ps nope") == ["ERR invalid_job_name: nope"]
    assert format_processes([ProcessRow(1, False, 0, -3.0)]) == ["1  idle  0  0"]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("show", "ERR invalid_job_name: "),
        ("show nope", "ERR invalid_job_name: nope"),
        ("show a b", "ERR invalid_value: usage: show <job>"),
        ("ps", "ERR invalid_job_name: "),
        ("set_min_processes", "ERR invalid_job_name: "),
        ("set_min_processes a", "ERR invalid_value: min_processes must be >= 0"),
        ("set_min_processes a 1 2", "ERR invalid_value: usage: set_min_processes <job> <n>"),
        ("set_min_processes nope 1", "ERR invalid_job_name: nope"),
        ("set_min_processes a x", "ERR invalid_value: min_processes must be >= 0"),
        ("set_min_processes a 1.5", "ERR invalid_value: min_processes must be >= 0"),
        ("set_min_processes a -1", "ERR invalid_value: min_processes must be >= 0"),
        ("set_min_processes a +1", "ERR invalid_value: min_processes must be >= 0"),
        ("set_min_processes a \u0661", "ERR invalid_value: min_processes must be >= 0"),
        ("set_min_processes a 2",
         "ERR invalid_value: min_processes must be smaller than max_processes"),
        ("set_max_processes a", "ERR invalid_value: max_processes must be >= 0"),
        ("set_max_processes nope 1", "ERR invalid_job_name: nope"),
        ("set_max_processes a ten", "ERR invalid_value: max_processes must be >= 0"),
        ("set_max_processes a -1", "ERR invalid_value: max_processes must be >= 0"),
        ("set_max_processes My::Workers::One::do_something_else 1",
         "ERR invalid_value: max_processes must be greater than min_processes"),
        ("set_processes a 1", "ERR invalid_value: max_processes must be >= 0"),
        ("set_processes a 1 2 3", "ERR invalid_value: usage: set_processes <job> <min> <max>"),
        ("set_processes nope 1 2", "ERR invalid_job_name: nope"),
        ("set_processes a x 2", "ERR invalid_value: min_processes must be >= 0"),
        ("set_processes a 1 y", "ERR invalid_value: max_processes must be >= 0"),
        ("set_processes a -1 2", "ERR invalid_value: min_processes must be >= 0"),
        ("set_processes a 1 -2", "ERR invalid_value: max_processes must be >= 0"),
        ("set_processes a 3 2",
         "ERR invalid_value: max_processes must be greater than min_processes"),
        ("kill", "ERR invalid_value: the given PID(s) do not belong to us"),
        ("kill abc", "ERR invalid_value: the given PID(s) do not belong to us"),
        ("kill 1 2", "ERR invalid_value: the given PID(s) do not belong to us"),
        ("kill 0 -1 -4711 +4711 04711", "ERR invalid_value: the given PID(s) do not belong to us"),
        ("killall", "ERR invalid_value: no job_names given"),
        ("killall a nope", "ERR invalid_job_name: nope"),
        ("killall * a", "ERR invalid_job_name: *"),
        ("frobnicate now", "ERR unknown_command: frobnicate"),
        ("STATUS", "ERR unknown_command: STATUS"),
        ("\x1b[2Jx", "ERR unknown_command: [2Jx"),
    ],
)
def test_errors_exact(line: str, reply: str) -> None:
    ctl = MemoryController()
    before = {n: (j.min_processes, j.max_processes) for n, j in ctl.jobs.items()}
    assert run(ctl, line) == [reply]
    assert {n: (j.min_processes, j.max_processes) for n, j in ctl.jobs.items()} == before
    assert ctl.stopped_jobs == [] and not ctl.shutdown_requested
    assert all(p > 0 for p in ctl.stopped_pids)  # never 0 or a process group


def test_set_commands_apply() -> None:
    ctl = MemoryController()
    assert run(ctl, "set_max_processes a 4") == ["OK"]
    assert run(ctl, "set_min_processes a 4") == ["OK"]  # min == max is allowed
    assert (ctl.jobs["a"].min_processes, ctl.jobs["a"].max_processes) == (4, 4)
    assert run(ctl, "set_processes a 0 0") == ["OK"]
    assert (ctl.jobs["a"].min_processes, ctl.jobs["a"].max_processes) == (0, 0)
    assert run(ctl, "set_processes a 2 7") == ["OK"]
    assert (ctl.jobs["a"].min_processes, ctl.jobs["a"].max_processes) == (2, 7)
    assert run(ctl, "set_processes a 007 8") == ["OK"]  # digits, as Perl's /^\d+$/
    assert (ctl.jobs["a"].min_processes, ctl.jobs["a"].max_processes) == (7, 8)


def test_controller_value_error_is_invalid_value() -> None:
    ctl = MemoryController()

    def refuse(job: str, lo: int | None, hi: int | None) -> None:
        raise ValueError("max_processes must be <= 64 (scoreboard size)")

    ctl.set_limits = refuse  # type: ignore[method-assign, assignment]
    assert run(ctl, "set_max_processes a 100") == [
        "ERR invalid_value: max_processes must be <= 64 (scoreboard size)"
    ]


def test_kill_and_killall() -> None:
    ctl = MemoryController()
    assert run(ctl, "kill 4711 4711 12345 0 abc") == ["OK"]  # others are passed over
    assert ctl.stopped_pids == [4711, 12345]
    assert run(ctl, "killall a My::Workers::Two::scale_image a") == ["OK"]
    assert run(ctl, "killall *") == ["OK"]
    assert ctl.stopped_jobs == [
        ["a", "My::Workers::Two::scale_image"],
        list(ctl.jobs),
    ]


def test_help_quit_shutdown_blank() -> None:
    ctl = MemoryController()
    helptext = run(ctl, "help")
    assert [line.split()[0] for line in helptext] == list(COMMANDS)
    quit_reply = handle_line(ctl, b"quit", LOG)
    assert quit_reply is not None and quit_reply.close and not quit_reply.terminate
    assert run(ctl, "shutdown") == ["OK"] and ctl.shutdown_requested
    assert handle_line(ctl, b"  \t ", LOG) is None
    assert run(ctl, "  status   ") == run(ctl, "status")


def test_invalid_utf8() -> None:
    assert run(MemoryController(), "x") == ["ERR unknown_command: x"]
    reply = handle_line(MemoryController(), b"status \xff\xfe", LOG)
    assert reply is not None and reply.lines == ("ERR invalid_encoding: commands are UTF-8",)


def test_internal_error_is_answered_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    ctl = MemoryController()
    ctl.fail = RuntimeError("boom\nsecond line")
    assert run(ctl, "status") == ["ERR internal_error: RuntimeError: boom second line"]
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None


def test_changes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    run(MemoryController(), "set_max_processes a 3")
    assert "set_max_processes a 3 -> OK" in caplog.text


class Waiting:
    """A client waiting for a deferred reply, as the console server's connection is."""

    def __init__(self, answers: list[tuple[str, ...]]) -> None:
        self.answers = answers

    def answer(self, reply: Reply) -> None:
        self.answers.append(reply.lines)

    def detach(self) -> int | None:
        return None


def test_reload_answers_only_once_the_reload_is_done() -> None:
    ctl = MemoryController()
    reply = handle_line(ctl, b"reload", LOG)
    assert reply is not None and reply.lines == () and reply.later is not None
    answers: list[tuple[str, ...]] = []
    reply.later(Waiting(answers))
    assert answers == [] and len(ctl.reloads) == 1  # asked, not answered yet
    ctl.reloads[0]("/etc/x.yml:3:1: interval: expected a number >= 0,\ngot 'x'")
    assert answers == [("ERR reload_failed: /etc/x.yml:3:1: interval: expected a number >= 0, "
                        "got 'x'",)]
    later = handle_line(ctl, b"reload", LOG).later
    assert later is not None
    later(Waiting(answers))
    ctl.reloads[1](None)
    assert answers[1] == ("OK",)
    assert run(ctl, "reload now") == ["ERR invalid_value: usage: reload"]
