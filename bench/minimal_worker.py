"""The floor for a Python worker: a minimal blocking loop over the Gearman binary protocol.

    python -m bench.minimal_worker --port P --function bench.echo

One socket, blocking `recv`; the result (WORK_COMPLETE, echoing the workload) and the next
GRAB_JOB go out in one `send`; PRE_SLEEP only after NO_JOB. No selector, no codec, no objects
per job beyond the packet's bytes: what our native backend is measured against (issue 15).
It keeps none of the driver's guarantees (no stop request, one server, no reconnect), and
SIGTERM ends it at once (the default action), as under supervisord.
"""

from __future__ import annotations

import argparse
import socket
import struct

REQ, RES = b"\0REQ", b"\0RES"
CAN_DO, PRE_SLEEP, NOOP, GRAB_JOB, NO_JOB, JOB_ASSIGN, WORK_COMPLETE = 1, 4, 6, 9, 10, 11, 13
HEADER = struct.Struct(">4sII")


def packet(cmd: int, *args: bytes) -> bytes:
    body = b"\0".join(args)
    return HEADER.pack(REQ, cmd, len(body)) + body


def serve(port: int, function: str) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    grab = packet(GRAB_JOB)
    sock.sendall(packet(CAN_DO, function.encode()) + grab)
    recv, send, unpack_from = sock.recv, sock.sendall, HEADER.unpack_from
    buf = b""
    while True:
        while len(buf) < 12:  # a header
            chunk = recv(65536)
            if not chunk:
                return
            buf += chunk
        magic, cmd, size = unpack_from(buf)
        while len(buf) < 12 + size:  # its body
            chunk = recv(65536)
            if not chunk:
                return
            buf += chunk
        body, buf = buf[12:12 + size], buf[12 + size:]
        if cmd == JOB_ASSIGN:
            handle, _, workload = body.split(b"\0", 2)
            done = handle + b"\0" + workload
            send(HEADER.pack(REQ, WORK_COMPLETE, len(done)) + done + grab)
        elif cmd == NO_JOB:
            send(packet(PRE_SLEEP))
        elif cmd == NOOP:
            send(grab)
        elif magic != RES:
            raise RuntimeError(f"not a response: {magic!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--function", required=True)
    args = parser.parse_args(argv)
    serve(args.port, args.function)


if __name__ == "__main__":
    main()
