"""The binary codec on its own: framing, strictness, and resilience to arbitrary input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearman_driver.protocol import (
    HEADER_SIZE,
    OVERSIZE_JOB,
    REQ,
    RES,
    SPEC,
    Cmd,
    Packet,
    PacketParser,
    ProtocolError,
    encode_packet,
    encode_request,
    encode_response,
)

# Every packet the worker sends, with realistic arguments.
WORKER_REQUESTS: list[tuple[Cmd, tuple[bytes, ...]]] = [
    (Cmd.SET_CLIENT_ID, (b"host-1234",)),
    (Cmd.RESET_ABILITIES, ()),
    (Cmd.CAN_DO, (b"reverse",)),
    (Cmd.GRAB_JOB_UNIQ, ()),
    (Cmd.PRE_SLEEP, ()),
    (Cmd.ECHO_REQ, (b"token\0with nul",)),
    (Cmd.WORK_COMPLETE, (b"H:host:1", b"result\0\0bytes")),
    (Cmd.WORK_FAIL, (b"H:host:1",)),
    (Cmd.WORK_EXCEPTION, (b"H:host:1", b"Traceback\0...")),
    (Cmd.WORK_DATA, (b"H:host:1", b"")),
    (Cmd.WORK_WARNING, (b"H:host:1", b"careful")),
    (Cmd.WORK_STATUS, (b"H:host:1", b"3", b"10")),
]

# Every packet the worker receives.
WORKER_RESPONSES: list[tuple[Cmd, tuple[bytes, ...]]] = [
    (Cmd.NOOP, ()),
    (Cmd.NO_JOB, ()),
    (Cmd.JOB_ASSIGN_UNIQ, (b"H:host:1", b"reverse", b"uniq", b"\0workload\0")),
    (Cmd.JOB_ASSIGN_UNIQ, (b"H:host:2", b"f", b"", b"")),
    (Cmd.JOB_ASSIGN, (b"H:host:3", b"f", b"data\0")),
    (Cmd.ECHO_RES, (b"token\0with nul",)),
    (Cmd.ERROR, (b"JOB_NOT_FOUND", b"Job given in work result not found")),
]


def parse_all(data: bytes, magic: bytes = RES, chunk: int = 0) -> list[Packet]:
    parser = PacketParser(magic)
    if not chunk:
        packets = parser.feed(data)
    else:
        packets = []
        for i in range(0, len(data), chunk):
            packets.extend(parser.feed(data[i : i + chunk]))
    assert parser.buffered == 0
    return packets


@pytest.mark.parametrize(("cmd", "args"), WORKER_REQUESTS, ids=lambda v: getattr(v, "name", ""))
def test_request_round_trip(cmd: Cmd, args: tuple[bytes, ...]) -> None:
    data = encode_request(cmd, *args)
    assert data[:4] == REQ
    assert struct.unpack(">II", data[4:12]) == (cmd, len(data) - HEADER_SIZE)
    assert parse_all(data, REQ) == [Packet(REQ, cmd, args)]


@pytest.mark.parametrize(("cmd", "args"), WORKER_RESPONSES, ids=lambda v: getattr(v, "name", ""))
def test_response_round_trip(cmd: Cmd, args: tuple[bytes, ...]) -> None:
    assert parse_all(encode_response(cmd, *args)) == [Packet(RES, cmd, args)]


def test_known_wire_bytes() -> None:
    # from the protocol document's example
    assert encode_request(Cmd.CAN_DO, b"reverse") == b"\0REQ\0\0\0\x01\0\0\0\x07reverse"
    assert encode_request(Cmd.GRAB_JOB_UNIQ) == b"\0REQ\0\0\0\x1e\0\0\0\0"
    assert parse_all(b"\0RES\0\0\0\x06\0\0\0\0") == [Packet(RES, Cmd.NOOP, ())]


def test_nul_bytes_stay_in_last_argument() -> None:
    workload = b"\0" * 5 + b"a\0b" + b"\0"
    [packet] = parse_all(encode_response(Cmd.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u", workload))
    assert packet.args == (b"H:1", b"f", b"u", workload)


def test_byte_by_byte_feeding_yields_the_same_packets() -> None:
    stream = b"".join(encode_response(cmd, *args) for cmd, args in WORKER_RESPONSES)
    expected = [Packet(RES, cmd, args) for cmd, args in WORKER_RESPONSES]
    assert parse_all(stream, chunk=1) == expected
    assert parse_all(stream, chunk=7) == expected
    assert parse_all(stream) == expected


def test_large_packet_in_chunks() -> None:
    workload = bytes(range(256)) * (64 * 1024)  # 16 MiB with NULs
    data = encode_response(Cmd.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", workload)
    [packet] = parse_all(data, chunk=65536)
    assert packet.args[3] == workload


def test_wanted_reports_missing_bytes() -> None:
    parser = PacketParser()
    data = encode_response(Cmd.ECHO_RES, b"x" * 100)
    assert parser.feed(data[:20]) == []
    assert parser.wanted == len(data) - 20
    assert parser.feed(data[20:]) == [Packet(RES, Cmd.ECHO_RES, (b"x" * 100,))]
    assert parser.buffered == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 400 Bad Request\r\n\r\n",  # wrong magic
        b"E",  # detected on the first byte, no need to wait for a header
        b"\0REX",
        REQ + struct.pack(">II", Cmd.NOOP, 0),  # request magic from a server
        RES + struct.pack(">II", 5, 0),  # type 5 is unused
        RES + struct.pack(">II", 999, 0),  # unknown type
        RES + struct.pack(">II", Cmd.CAN_DO, 1) + b"x",  # a request type from a server
        RES + struct.pack(">II", Cmd.NOOP, 3) + b"abc",  # NOOP takes no arguments
        RES + struct.pack(">II", Cmd.JOB_ASSIGN_UNIQ, 5) + b"a\0b\0c",  # 3 args instead of 4
        RES + struct.pack(">II", Cmd.ERROR, 0),  # 1 arg instead of 2
    ],
)
def test_malformed_input_raises(garbage: bytes) -> None:
    parser = PacketParser()
    with pytest.raises(ProtocolError):
        parser.feed(garbage)
    with pytest.raises(ProtocolError):  # stays broken
        parser.feed(encode_response(Cmd.NOOP))


def test_oversized_packet_rejected_from_its_header() -> None:
    parser = PacketParser(max_size=1024)
    with pytest.raises(ProtocolError, match="exceeds"):
        parser.feed(RES + struct.pack(">II", Cmd.ECHO_RES, 1025))
    parser = PacketParser(max_size=1024)
    assert parser.feed(encode_response(Cmd.ECHO_RES, b"x" * 1024))[0].args == (b"x" * 1024,)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 0])
@pytest.mark.parametrize("uniq", [True, False])
def test_an_oversize_job_is_read_past_not_buffered(chunk: int, uniq: bool) -> None:
    """With drop_oversize_jobs, a job over the limit yields its handle, function and size,
    its workload is dropped as it arrives, and the stream goes on after it."""
    workload = bytes(range(256)) * 40  # 10 KiB, NULs included
    if uniq:
        job = encode_response(Cmd.JOB_ASSIGN_UNIQ, b"H:h:9", b"big.fn", b"u1", workload)
    else:
        job = encode_response(Cmd.JOB_ASSIGN, b"H:h:9", b"big.fn", workload)
    stream = encode_response(Cmd.NOOP) + job + encode_response(Cmd.ECHO_RES, b"after")
    parser = PacketParser(max_size=1024, drop_oversize_jobs=True)
    packets: list[Packet] = []
    for i in range(0, len(stream), chunk or len(stream)):
        packets.extend(parser.feed(stream[i:i + (chunk or len(stream))]))
        assert parser.buffered <= 1024 + HEADER_SIZE
    assert [(p.cmd, p.args) for p in packets] == [
        (Cmd.NOOP, ()), (OVERSIZE_JOB, (b"H:h:9", b"big.fn", str(len(workload)).encode())),
        (Cmd.ECHO_RES, (b"after",))]
    with pytest.raises(ProtocolError, match="exceeds"):  # other types are still refused
        parser.feed(RES + struct.pack(">II", Cmd.ECHO_RES, 1025))


def test_malformed_after_good_packets_still_raises() -> None:
    parser = PacketParser()
    with pytest.raises(ProtocolError):
        parser.feed(encode_response(Cmd.NOOP) + b"junk-after")


def test_encode_refuses_what_a_parser_would_reject() -> None:
    with pytest.raises(ValueError):
        encode_request(Cmd.CAN_DO)  # missing argument
    with pytest.raises(ValueError):
        encode_request(Cmd.WORK_COMPLETE, b"H\0:1", b"x")  # NUL in a non-final argument
    with pytest.raises(ValueError):
        encode_request(Cmd.NOOP)  # a response type
    with pytest.raises(ValueError):
        encode_packet(b"\0XYZ", Cmd.NOOP)


def test_spec_covers_every_command() -> None:
    assert set(SPEC) == set(Cmd)


# -- arbitrary input -----------------------------------------------------------------------

MAX = 4096


def _valid_packet() -> st.SearchStrategy[bytes]:
    def build(cmd: int, parts: list[bytes], last: bytes) -> bytes:
        nargs = SPEC[cmd][0]
        args = [p.replace(b"\0", b"") for p in parts[: max(nargs - 1, 0)]]
        args += [b""] * (max(nargs - 1, 0) - len(args))
        if nargs:
            args.append(last)
        return encode_response(cmd, *args)

    res_cmds = sorted(c for c, (_, d) in SPEC.items() if d & 2)
    return st.builds(
        build, st.sampled_from(res_cmds), st.lists(st.binary(max_size=20), max_size=6),
        st.binary(max_size=200),
    )


def _check_stream(parser: PacketParser, chunks: list[bytes]) -> None:
    for chunk in chunks:
        try:
            packets = parser.feed(chunk)
        except ProtocolError:
            return  # the only exception allowed
        for packet in packets:
            assert packet.magic == RES
            assert len(packet.args) == SPEC[packet.cmd][0]
        # never more than one packet (header + max_size) waits for more bytes
        assert parser.buffered <= HEADER_SIZE + MAX


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_random_bytes_only_raise_protocol_error(chunks: list[bytes]) -> None:
    _check_stream(PacketParser(max_size=MAX), chunks)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_valid_packet(), min_size=1, max_size=8),
    st.data(),
)
def test_valid_streams_truncated_and_mutated(packets: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(packets)
    cut = data.draw(st.integers(0, len(stream)))
    stream = stream[:cut]
    if stream and data.draw(st.booleans()):  # flip one byte somewhere
        pos = data.draw(st.integers(0, len(stream) - 1))
        flipped = bytes([stream[pos] ^ data.draw(st.integers(1, 255))])
        stream = stream[:pos] + flipped + stream[pos + 1 :]
    sizes = data.draw(st.lists(st.integers(1, 50), max_size=30))
    chunks, pos = [], 0
    for size in sizes:
        chunks.append(stream[pos : pos + size])
        pos += size
    chunks.append(stream[pos:])
    _check_stream(PacketParser(max_size=MAX), chunks)


@given(st.lists(_valid_packet(), min_size=1, max_size=8), st.integers(1, 40))
def test_valid_streams_parse_exactly(packets: list[bytes], chunk: int) -> None:
    expected = [p for raw in packets for p in PacketParser().feed(raw)]
    assert len(expected) == len(packets)
    assert parse_all(b"".join(packets), chunk=chunk) == expected


def test_a_lone_job_assignment_is_checked_like_any_packet() -> None:
    """A whole JOB_ASSIGN_UNIQ in one read takes a short cut; it must not skip a check."""
    body = b"H:1\0f\0u"  # three arguments where four are due
    short = RES + struct.pack(">II", Cmd.JOB_ASSIGN_UNIQ, len(body)) + body
    with pytest.raises(ProtocolError, match="needs 4 arguments"):
        PacketParser().feed(short)
    with pytest.raises(ProtocolError, match="bad magic"):
        PacketParser(REQ).feed(encode_response(Cmd.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u", b"w"))
    with pytest.raises(ProtocolError, match="exceeds"):
        PacketParser(max_size=8).feed(encode_response(Cmd.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u",
                                                      b"workload"))
