"""TCP keepalive for every connection to gearmand: the `keepalive` setting as socket options.

Why: an idle worker waits for a NOOP and sends nothing, so a gearmand host that vanished
without a FIN or RST (power loss, a hard reboot, a NAT or firewall that dropped the idle
connection's state) is never noticed without probes, and the worker is stranded. The kernel
probes well and for free: after `keepalive` seconds of silence it sends a probe every
`keepalive / 3` seconds, and TCP_USER_TIMEOUT closes the connection once nothing has come back
for 3 × `keepalive` seconds — for unanswered probes and for written data nobody acknowledges
alike. The options are set once per connection, before it connects: nothing on the job path.

`keepalive` also bounds each connect attempt (`connect_timeout`), so that a silent server is
given up on and retried with backoff instead of being waited for.
"""

from __future__ import annotations

import math
import socket
from typing import NamedTuple

#: The default: shorter than the idle timeouts of common NATs, firewalls and load balancers
#: (often 300 s or more), so their state for an idle worker's connection never expires.
DEFAULT_KEEPALIVE = 60
#: A dead peer is noticed within this many times `keepalive`.
DETECTION_FACTOR = 3
#: A connect attempt (one address) never waits longer than this, whatever `keepalive` says:
#: a server that comes back is then found again within seconds, not minutes.
CONNECT_CEILING = 10.0
#: The kernel takes TCP_KEEPIDLE and TCP_KEEPINTVL in whole seconds up to this.
MAX_KEEPALIVE = 32767


class Probes(NamedTuple):
    """The kernel's figures for one `keepalive` value."""

    idle: int  # TCP_KEEPIDLE: seconds of silence before the first probe
    interval: int  # TCP_KEEPINTVL: seconds between probes
    max_probes: int  # TCP_KEEPCNT: unanswered probes before the connection is dropped
    user_timeout_ms: int  # TCP_USER_TIMEOUT: nothing acknowledged for this long: dropped


def probes(keepalive: float) -> Probes:
    """Whole seconds (the kernel's unit), at least 1; idle + count × interval ≈ 3 × idle."""
    idle = min(MAX_KEEPALIVE, max(1, math.ceil(keepalive)))
    interval = max(1, idle // DETECTION_FACTOR)
    count = max(1, (DETECTION_FACTOR - 1) * idle // interval)
    return Probes(idle, interval, count, DETECTION_FACTOR * idle * 1000)


def set_keepalive(sock: socket.socket, keepalive: float) -> None:
    """Turn probing on for `sock` (before it connects); `keepalive` 0 leaves it off."""
    if keepalive <= 0:
        return
    idle, interval, count, user_timeout = probes(keepalive)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout)


def connect_timeout(keepalive: float) -> float:
    """How long one connect attempt to one address may take: `keepalive`, at most
    CONNECT_CEILING (also when probing is off)."""
    return min(keepalive, CONNECT_CEILING) if keepalive > 0 else CONNECT_CEILING
