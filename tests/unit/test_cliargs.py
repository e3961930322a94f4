"""The command line: Perl-compatible flags, dashed spellings, exit 64 on a usage mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gearman_driver.config.cmdline import EX_USAGE, CommandLine, parse_args
from gearman_driver.config.settings import ConfigError, load_settings


def test_nothing_given() -> None:
    assert parse_args([]) == CommandLine(config_files=[], overrides={}, check_config=False)


def test_perl_style_flags() -> None:
    command = parse_args(
        [
            "--configfile", "a.yml", "--configfile=b.yml",
            "--namespaces", "my.workers", "--namespaces", "other.workers",
            "--lib", "./lib", "--lib", "/custom/lib",
            "--server", "localhost:4730,otherhost:4731",
            "--console_port", "0", "--console_host", "0.0.0.0", "--console_socket", "/run/c.sock",
            "--metrics_port", "9731", "--metrics_host", "::1",
            "--interval", "60", "--max_idle_time", "2.5", "--graceful_timeout", "10",
            "--keepalive", "1.5",
            "--logfile", "gd.log", "--loglevel", "debug", "--loglayout", "%m%n",
            "--daemonize", "--pidfile", "/run/gd.pid", "--worker_backend", "native",
        ]
    )  # fmt: skip
    assert command.config_files == ["a.yml", "b.yml"]
    assert command.check_config is False
    assert command.overrides == {
        "namespaces": ["my.workers", "other.workers"],
        "lib": ["./lib", "/custom/lib"],
        "server": "localhost:4730,otherhost:4731",
        "console_port": 0,
        "console_host": "0.0.0.0",
        "console_socket": "/run/c.sock",
        "metrics_port": 9731,
        "metrics_host": "::1",
        "interval": 60,
        "max_idle_time": 2.5,
        "graceful_timeout": 10,
        "keepalive": 1.5,
        "logfile": "gd.log",
        "loglevel": "debug",
        "loglayout": "%m%n",
        "daemonize": True,
        "pidfile": "/run/gd.pid",
        "worker_backend": "native",
    }


@pytest.mark.parametrize(
    ("flag", "key"),
    [
        ("--console-port", "console_port"),
        ("--console-host", "console_host"),
        ("--console-socket", "console_socket"),
        ("--metrics-port", "metrics_port"),
        ("--metrics-host", "metrics_host"),
        ("--max-idle-time", "max_idle_time"),
        ("--graceful-timeout", "graceful_timeout"),
        ("--worker-backend", "worker_backend"),
    ],
)
def test_dashed_spellings(flag: str, key: str) -> None:
    assert key in parse_args([flag, "7"]).overrides


@pytest.mark.parametrize("flag", ["--check-config", "--check_config"])
def test_check_config(flag: str) -> None:
    command = parse_args([flag, "--configfile", "x.yml"])
    assert command.check_config is True and command.overrides == {}


def test_no_daemonize() -> None:
    assert parse_args(["--no-daemonize"]).overrides == {"daemonize": False}


@pytest.mark.parametrize(
    "argv",
    [["--bogus"], ["--interval"], ["positional"], ["--configfile"], ["--daemonize=yes"]],
)
def test_usage_mistake_exits_64_with_one_line_and_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == EX_USAGE == 64
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("gearman-driver: error: ")
    assert lines[1].startswith("usage: gearman-driver ")


def test_version_and_help_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--version", "--help"):
        with pytest.raises(SystemExit) as info:
            parse_args([flag])
        assert info.value.code == 0
    assert "gearman-driver" in capsys.readouterr().out


def test_command_line_overrides_the_files(tmp_path: Path) -> None:
    first = tmp_path / "a.yml"
    first.write_text("namespaces: [a, b]\ninterval: 2\nconsole_port: 1234\n", encoding="utf-8")
    second = tmp_path / "b.yml"
    second.write_text("interval: 3\nloglevel: ERROR\n", encoding="utf-8")
    command = parse_args(
        ["--configfile", str(first), "--configfile", str(second), "--namespaces", "c",
         "--console-port", "0", "--loglevel", "warn"]
    )  # fmt: skip
    s = load_settings(command.config_files, command.overrides)
    assert s.namespaces == ("c",)
    assert (s.interval, s.console_port, s.loglevel) == (3, 0, "WARNING")
    assert s.locate("namespaces") == "command line"
    assert s.locate("interval") == f"{second}:1:1"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--interval", "x"], "command line: --interval: expected a number >= 0, got 'x'"),
        (
            ["--max-idle-time", "-1"],
            "command line: --max_idle_time: expected a number >= 0, got -1",
        ),
        (
            ["--console_port", "99999"],
            "command line: --console_port: expected an integer 0..65535, got 99999",
        ),
        (
            ["--console-port", "1.5"],
            "command line: --console_port: expected an integer 0..65535, got '1.5'",
        ),
        (
            ["--graceful-timeout", "0"],
            "command line: --graceful_timeout: expected a number > 0, got 0",
        ),
        (["--server", "host:0"], "command line: --server: expected a port 1..65535, got 'host:0'"),
        (
            ["--worker-backend", "xs"],
            "command line: --worker_backend: expected one of: pygearman, native, got 'xs'",
        ),
        (
            ["--namespaces", "ok", "--namespaces", "My::Workers"],
            "command line: --namespaces[1]: expected a Python package name such as "
            "'myapp.workers', got 'My::Workers'",
        ),
    ],
)
def test_bad_values_are_config_errors_at_the_command_line(argv: list[str], expected: str) -> None:
    command = parse_args(argv)  # parsing succeeds; the value is judged with the config
    with pytest.raises(ConfigError) as info:
        load_settings(command.config_files, command.overrides)
    assert str(info.value) == expected
    assert info.value.exit_status == 78


def test_every_default_named_in_help_is_the_settings_default() -> None:
    """`--help` states defaults by hand: each must be the one the settings really use (the
    help of --worker_backend once named pygearman while native was the default)."""
    from gearman_driver.config.cmdline import _VALUE_OPTIONS
    from gearman_driver.config.settings import DEFAULTS

    named = 0
    for key, _metavar, text in _VALUE_OPTIONS:
        match = re.search(r"\(default: (.+?)\)$", text)
        if match is None or key in ("logfile",):  # "stderr" stands for no file
            continue
        named += 1
        assert match.group(1).replace("%%", "%").strip("'") == str(DEFAULTS[key]), key
    assert named >= 8
