"""The `server` setting: gearmand addresses as ``host[:port]`` lists, parsed and written back."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from gearman_driver.config.reading import got
from gearman_driver.ports import GEARMAND_PORT

_SERVER_ENTRY = re.compile(r"\s*(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]\s]*))(?::(?P<port>\d+))?\s*")


class ServerError(ValueError):
    """A bad entry: its index in a list (none for a comma string) and the expected text."""

    def __init__(self, index: tuple[int, ...], text: str) -> None:
        super().__init__(text)
        self.index, self.text = index, text


def parse_gearmand_servers(value: str | Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``"a:1,b"`` or ``["a:1", "b"]`` to ``(("a", 1), ("b", 4730))``; IPv6 in brackets."""
    entries = (
        [(None, part) for part in value.split(",")]
        if isinstance(value, str)
        else list(enumerate(value))
    )
    if not entries:
        raise ServerError((), "expected at least one 'host[:port]', got empty list")
    servers: list[tuple[str, int]] = []
    for index, entry in entries:
        at = () if index is None else (index,)
        shown = got(value if index is None else entry)
        match = _SERVER_ENTRY.fullmatch(entry)
        v6 = match.group("v6") if match else None
        host = v6 if v6 is not None else match.group("host") if match else ""
        if not match or not host:
            raise ServerError(at, f"expected 'host[:port]' with a host name, got {shown}")
        if v6 is not None:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ServerError(at, f"expected an IPv6 address in [], got {shown}") from None
        port = int(match.group("port")) if match.group("port") else GEARMAND_PORT
        if not 1 <= port <= 65535:
            raise ServerError(at, f"expected a port 1..65535, got {shown}")
        servers.append((host, port))
    return tuple(servers)


def server_string(servers: Sequence[tuple[str, int]]) -> str:
    """Canonical ``host:port,host:port`` (IPv6 hosts in brackets), as gearmand tools write it."""
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in servers)

