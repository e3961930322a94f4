"""Peer uids from the kernel, and the console's access rule as a plain function call."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path

import pytest

from gearman_driver.config.settings import ConfigError, load_settings
from gearman_driver.console.commands import CHANGES, COMMANDS, handle_line
from gearman_driver.peercred import peer_uid, resolve_users, tcp_owner
from tests.unit.test_console_support import MemoryController

LOG = logging.getLogger("test.peercred")


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"),
                                              (socket.AF_INET6, "::1")])
def test_tcp_peer_uid_is_the_client_sockets_owner(family: int, host: str) -> None:
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        with socket.create_connection(server.getsockname()[:2]) as _client:
            accepted, _ = server.accept()
            with accepted:
                assert peer_uid(accepted) == os.geteuid()


def test_an_ipv4_client_of_a_dual_stack_listener_is_found() -> None:
    with socket.socket(socket.AF_INET6) as server:
        server.bind(("::", 0))
        server.listen()
        with socket.create_connection(("127.0.0.1", server.getsockname()[1])):
            accepted, _ = server.accept()
            with accepted:
                assert accepted.getpeername()[0] == "::ffff:127.0.0.1"
                assert peer_uid(accepted) == os.geteuid()


def test_a_closed_client_proves_nothing() -> None:
    """Its socket is orphaned (inode 0, listed as uid 0): never taken for root."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        client.close()
        with accepted:
            assert peer_uid(accepted) is None


def test_unix_peer_uid_from_so_peercred() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert peer_uid(left) == os.geteuid()


def test_tcp_owner_reads_the_kernels_table(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
        "  timeout inode\n"
        "   0: 0100007F:A000 0100007F:B000 01 00000000:00000000 00:00000000 00000000  1234"
        "        0 0 1 0000000000000000 20 4 30 10 -1\n"
        "   1: 0100007F:A001 0100007F:B000 01 00000000:00000000 00:00000000 00000000  4321"
        "        0 99 1 0000000000000000 20 4 30 10 -1\n")
    lo = ipaddress.ip_address("127.0.0.1")
    assert tcp_owner((lo, 0xA001), (lo, 0xB000), [str(table)]) == 4321
    assert tcp_owner((lo, 0xA000), (lo, 0xB000), [str(table)]) is None  # inode 0
    assert tcp_owner((lo, 0xA002), (lo, 0xB000), [str(table)]) is None


def test_resolve_users() -> None:
    assert resolve_users([]) == frozenset()
    assert resolve_users(["nobody", 1000, "7"]) == frozenset({65534, 1000, 7})
    assert resolve_users(["root", "*"]) is None
    with pytest.raises(KeyError):
        resolve_users(["no-such-user-here"])


def test_config_names_an_unknown_user(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("console_allow_users:\n  - nobody\n  - no-such-user-here\n")
    with pytest.raises(ConfigError) as info:
        load_settings([str(path)])
    assert str(info.value) == (
        f"{path}:3:5: console_allow_users[1]: expected a user name, a uid or '*', got "
        "'no-such-user-here' (no such user)")
    settings = load_settings([], {"console_allow_users": ["nobody", "0"]})
    assert resolve_users(settings.console_allow_users) == frozenset({65534, 0})


def test_only_changing_commands_ask_for_permission() -> None:
    asked: list[str] = []

    def deny() -> str:
        asked.append("x")
        return "uid 7 may not change anything"

    for name in COMMANDS:
        before = len(asked)
        reply = handle_line(MemoryController(), name.encode(), LOG, "t", deny)
        if name in CHANGES:
            assert reply is not None
            assert reply.lines == ("ERR permission_denied: uid 7 may not change anything",)
            assert len(asked) == before + 1
        else:
            assert len(asked) == before, name
    assert CHANGES == {"set_min_processes", "set_max_processes", "set_processes", "kill",
                       "killall", "shutdown", "reload"}
