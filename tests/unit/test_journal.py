"""The journal's native datagram format, byte for byte as systemd documents it."""

from __future__ import annotations

import logging
import struct

from gearman_driver import journal, logs


def test_fields_with_a_newline_use_the_length_prefixed_form() -> None:
    data = journal.encode({"MESSAGE": "Traceback\n  line", "PRIORITY": "3"})
    assert data == (b"MESSAGE\n" + struct.pack("<Q", 16) + b"Traceback\n  line\n"
                    + b"PRIORITY=3\n")


def test_a_record_carries_job_and_the_job_in_hand() -> None:
    handler = journal.JournalHandler("/nonexistent")
    try:
        logs.set_process_context("upper[7]", job="upper")
        logs.job_in_hand("text.upper", "H:host:42")
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "slow %s", ("db",), None)
        fields = handler.fields(record)
        assert fields["MESSAGE"] == "slow db" and fields["PRIORITY"] == "4"
        assert (fields["JOB"], fields["GEARMAN_FUNCTION"], fields["GEARMAN_HANDLE"]) == (
            "upper", "text.upper", "H:host:42")
        logs.job_done()
        assert "GEARMAN_HANDLE" not in handler.fields(record)
    finally:
        logs.set_process_context("")
        handler.close()
