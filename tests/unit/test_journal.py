"""The journal's native datagram format, byte for byte as systemd documents it."""

from __future__ import annotations

import logging
import struct

import pytest

from gearman_driver import journal, logs


def test_fields_with_a_newline_use_the_length_prefixed_form() -> None:
    data = journal.encode({"MESSAGE": "Traceback\n  line", "PRIORITY": "3"})
    assert data == (b"MESSAGE\n" + struct.pack("<Q", 16) + b"Traceback\n  line\n"
                    + b"PRIORITY=3\n")


def test_a_record_carries_job_and_the_job_in_hand() -> None:
    handler = journal.JournalHandler("/nonexistent")
    try:
        logs.set_process_context("upper[7]", job="upper")
        journal.job_in_hand = ("text.upper", "H:host:42")  # as the job runner sets it
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "slow %s", ("db",), None)
        fields = handler.fields(record)
        assert fields["MESSAGE"] == "slow db" and fields["PRIORITY"] == "4"
        assert (fields["JOB"], fields["GEARMAN_FUNCTION"], fields["GEARMAN_HANDLE"]) == (
            "upper", "text.upper", "H:host:42")
        journal.job_in_hand = None
        assert "GEARMAN_HANDLE" not in handler.fields(record)
    finally:
        logs.set_process_context("")
        handler.close()


def test_without_the_socket_a_record_goes_to_stderr_with_its_priority(
        capsys: pytest.CaptureFixture[str]) -> None:
    handler = journal.JournalHandler("/nonexistent/journal.socket")
    try:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom\nline 2", (), None)
        handler.emit(record)
    finally:
        handler.close()
    assert capsys.readouterr().err == "<3>boom\n<3>line 2\n"


def test_the_handle_in_hand_may_be_bytes_as_the_job_path_gives_it() -> None:
    handler = journal.JournalHandler("/nonexistent")
    try:
        journal.job_in_hand = ("text.upper", b"H:host:43")
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
        assert handler.fields(record)["GEARMAN_HANDLE"] == "H:host:43"
    finally:
        journal.job_in_hand = None
        handler.close()
