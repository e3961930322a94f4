"""Config reading, checking and merging: every kind of user mistake is one precise line."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from gearman_driver.config import validation as config
from gearman_driver.config.settings import (
    DEFAULTS,
    EX_CONFIG,
    ConfigError,
    Settings,
    load_settings,
    options_for,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "gearman-driver" / "config.yml"
TOP_KEYS = sorted(config.schema()["properties"])


def write(tmp_path: Path, text: str, name: str = "cfg.yml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(files: list[str], overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(files, overrides)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert info.value.exit_status == EX_CONFIG == 78
    return message


# --- defaults and good files ---------------------------------------------------------------


def test_no_files_gives_the_defaults() -> None:
    s = load_settings([])
    assert s.namespaces == () and s.lib == ()
    assert s.server == (("localhost", 4730),) and s.server_string == "localhost:4730"
    assert (s.console_port, s.console_host, s.console_socket) == (47300, "127.0.0.1", None)
    assert (s.interval, s.max_idle_time, s.graceful_timeout) == (5, 0, 30)
    assert s.keepalive == 60
    assert (s.logfile, s.loglevel, s.loglayout) == (None, "INFO", "[%d] %p %m%n")
    assert (s.daemonize, s.pidfile, s.unknown_job_callback) == (False, None, None)
    assert (s.worker_backend, s.max_jobs_per_process, s.max_jobs_jitter) == ("native", 0, 0)
    assert s.worker_options == {} and s.job_runtime_attributes == {}
    assert s.config_files == ()
    assert s.locate("interval") == "defaults"
    assert set(DEFAULTS) == set(TOP_KEYS)


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(config.schema())


def test_example_config_validates() -> None:
    s = load_settings([str(EXAMPLE)])
    assert s.namespaces == ("examples.workers",)
    assert s.server == (("localhost", 4730),)
    assert (s.console_port, s.interval, s.max_idle_time, s.loglevel) == (47300, 1, 10, "INFO")
    assert "GLOBAL" in s.worker_options
    assert s.job_runtime_attributes == {}


def test_example_job_runtime_attributes_validate_when_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    start = text.index("# job_runtime_attributes:")
    block = "\n".join(line.replace("# ", "", 1) for line in text[start:].splitlines())
    s = load_settings([write(tmp_path, text[:start] + block + "\n")])
    assert s.job_runtime_attributes["examples.workers.text.Text.upper"]["max_processes"] == 10
    assert s.job_runtime_attributes["maths.arith"] == {"max_processes": 4, "timeout": 30.0}


def test_empty_file_is_an_empty_config(tmp_path: Path) -> None:
    assert load_settings([write(tmp_path, "")]).interval == 5
    assert load_settings([write(tmp_path, "# only a comment\n")]).interval == 5


def test_values_are_typed_and_normalised(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "namespaces: my.workers\nlib: /opt/lib\nloglevel: warn\ninterval: 2\n"
        "server: '[::1]:4731, other'\nunknown_job_callback: 'my.alerts:notify'\n"
        "job_runtime_attributes:\n  m.C.job: {min_processes: 1, max_processes: 2.0, timeout: 3}\n",
    )
    s = load_settings([path])
    assert s.namespaces == ("my.workers",) and s.lib == ("/opt/lib",)
    assert s.loglevel == "WARNING"
    assert isinstance(s.interval, float) and s.interval == 2.0
    assert s.server == (("::1", 4731), ("other", 4730))
    assert s.server_string == "[::1]:4731,other:4730"
    assert s.job_runtime_attributes == {
        "m.C.job": {"min_processes": 1, "max_processes": 2, "timeout": 3.0}
    }
    assert s.config_files == (path,)
    with pytest.raises(AttributeError):
        s.interval = 3  # type: ignore[misc]


@pytest.mark.parametrize(("written", "level"), [("fatal", "CRITICAL"), ("Debug", "DEBUG")])
def test_loglevel_aliases(tmp_path: Path, written: str, level: str) -> None:
    assert load_settings([write(tmp_path, f"loglevel: {written}\n")]).loglevel == level


def test_server_as_a_list(tmp_path: Path) -> None:
    s = load_settings([write(tmp_path, "server:\n  - a:1\n  - b\n")])
    assert s.server == (("a", 1), ("b", 4730)) and s.server_string == "a:1,b:4730"


# --- mistakes, each with file:line:col, key path and what was expected ---------------------


def test_wrong_type_points_at_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, "# settings\nnamespaces: [a]\n\ninterval: fast\n")
    assert error_of([path]) == f"{path}:4:11: interval: expected a number >= 0, got 'fast'"


def test_nested_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "worker_options:\n  GLOBAL: [1, 2]\n")
    assert error_of([path]) == f"{path}:2:11: worker_options.GLOBAL: expected a mapping, got list"


def test_unknown_top_level_key_points_at_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: 1\nintervall: 2\n")
    message = error_of([path])
    assert message.startswith(
        f"{path}:2:1: intervall: unknown key (expected one of: console_allow_users, console_host, "
    )
    assert message.endswith("worker_backend, worker_options)")


def test_unknown_key_in_job_runtime_attributes(tmp_path: Path) -> None:
    path = write(
        tmp_path, "job_runtime_attributes:\n  m.C.job:\n    min_processes: 1\n    max_proc: 3\n"
    )
    assert error_of([path]) == (
        f"{path}:4:5: job_runtime_attributes.m.C.job.max_proc: unknown key (expected one of: "
        "concurrency, max_jobs_per_process, max_processes, max_rss_mb, min_processes, timeout, "
        "worker_backend)"
    )


def test_first_mistake_in_the_document_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "console_port: -1\ninterval: x\n")
    assert error_of([path]) == f"{path}:1:15: console_port: expected an integer 0..65535, got -1"


@pytest.mark.parametrize(
    ("text", "where", "expected"),
    [
        ("console_port: 70000\n", "1:15: console_port", "expected an integer 0..65535, got 70000"),
        ("console_port: true\n", "1:15: console_port", "expected an integer 0..65535, got true"),
        ("graceful_timeout: 0\n", "1:19: graceful_timeout", "expected a number > 0, got 0"),
        ("keepalive: -1\n", "1:12: keepalive", "expected a number 0..32767, got -1"),
        ("keepalive: 1e6\n", "1:12: keepalive", "expected a number 0..32767, got 1000000.0"),
        ("keepalive: off\n", "1:12: keepalive", "expected a number 0..32767, got 'off'"),
        ("max_idle_time: .nan\n", "1:16: max_idle_time", "expected a number >= 0, got nan"),
        ("interval:\n", "1:1: interval", "expected a number >= 0, got null"),
        ("daemonize: 'yes'\n", "1:12: daemonize", "expected true or false, got 'yes'"),
        ("max_jobs_jitter: 1.5\n", "1:18: max_jobs_jitter", "expected an integer >= 0, got 1.5"),
        (
            "worker_backend: xs\n",
            "1:17: worker_backend",
            "expected one of: pygearman, native, got 'xs'",
        ),
        (
            "loglevel: loud\n",
            "1:11: loglevel",
            "expected one of: DEBUG, INFO, WARNING, WARN, ERROR, CRITICAL, FATAL, got 'loud'",
        ),
        ("logfile: ''\n", "1:10: logfile", "expected a non-empty string or null, got ''"),
        (
            "namespaces: [ok, My::Workers]\n",
            "1:18: namespaces[1]",
            "expected a Python package name such as 'myapp.workers', got 'My::Workers'",
        ),
        (
            "namespaces: {a: 1}\n",
            "1:13: namespaces",
            "expected a Python package name or a list of them, got mapping",
        ),
        (
            "unknown_job_callback: notify\n",
            "1:23: unknown_job_callback",
            "expected 'module:function' or null, got 'notify'",
        ),
        (
            'unknown_job_callback: "m:f\\n"\n',
            "1:23: unknown_job_callback",
            "expected 'module:function' or null, got 'm:f\\n'",
        ),
        (
            "worker_options:\n  My::Class: {}\n",
            "2:3: worker_options.My::Class",
            "expected a key 'GLOBAL' or '<module>.<Class>', got 'My::Class'",
        ),
        (
            "job_runtime_attributes:\n  'a b': {}\n",
            "2:3: job_runtime_attributes.a b",
            "expected a job name without white space (such as "
            "'<module>.<Class>.<method or process_group>'), got 'a b'",
        ),
        (
            "job_runtime_attributes:\n  m.C.j: {timeout: -1}\n",
            "2:20: job_runtime_attributes.m.C.j.timeout",
            "expected a number > 0 or null, got -1",
        ),
        (
            "job_runtime_attributes:\n  m.C.j: 3\n",
            "2:10: job_runtime_attributes.m.C.j",
            "expected a mapping, got 3",
        ),
        ("- a\n- b\n", "1:1: top level", "expected a mapping of settings, got list"),
        ("just text\n", "1:1: top level", "expected a mapping of settings, got 'just text'"),
    ],
)
def test_mistakes(tmp_path: Path, text: str, where: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert error_of([path]) == f"{path}:{where}: {expected}"


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("interval: 1\nserver: [a,\n", "3:1", "expected the node content"),
        ("interval: 1\n  bad: indent\n", "2:6", "mapping values are not allowed here"),
        ("a: 1\na: 2\n", "2:1", 'found duplicate key "a"'),
        ("a: *nowhere\n", "1:4", "found undefined alias"),
        ("---\na: 1\n---\nb: 2\n", "3:1", "expected a single document"),
    ],
)
def test_yaml_syntax_errors(tmp_path: Path, text: str, where: str, problem: str) -> None:
    path = write(tmp_path, text)
    message = error_of([path])
    assert message.startswith(f"{path}:{where}: invalid YAML: {problem}"), message


@pytest.mark.parametrize(
    ("server", "where", "expected"),
    [
        ("''", "server", "got ''"),
        ("'a:1,,b'", "server", "got 'a:1,,b'"),
        ("':4730'", "server", "got ':4730'"),
        ("'host:port'", "server", "got 'host:port'"),
        ("'host;4730'", "server", "got 'host;4730'"),
        ("[]", "server", "or a non-empty list of 'host[:port]', got empty list"),
        ("[a, 'b,c']", "server[1]", "expected 'host[:port]', got 'b,c'"),
        ("'host:0'", "server", "expected a port 1..65535, got 'host:0'"),
        ("'a, b:65536'", "server", "expected a port 1..65535, got 'a, b:65536'"),
        ("[a, 'b:99999']", "server[1]", "expected a port 1..65535, got 'b:99999'"),
        ("'[::zz]:1'", "server", "got '[::zz]:1'"),
        ("'[1:2:3]'", "server", "expected an IPv6 address in [], got '[1:2:3]'"),
        ("4730", "server", "got 4730"),
    ],
)
def test_bad_servers(tmp_path: Path, server: str, where: str, expected: str) -> None:
    path = write(tmp_path, f"server: {server}\n")
    message = error_of([path])
    assert message.startswith(f"{path}:1:") and f": {where}: expected " in message
    assert message.endswith(expected)


def test_min_above_max_in_one_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "job_runtime_attributes:\n  m.C.job:\n    min_processes: 5\n    max_processes: 2\n",
    )
    assert error_of([path]) == (
        f"{path}:3:20: job_runtime_attributes.m.C.job.min_processes: "
        "expected at most max_processes (2), got 5"
    )


def test_min_above_max_across_files_blames_the_later_file(tmp_path: Path) -> None:
    first = write(tmp_path, "job_runtime_attributes:\n  m.C.job: {min_processes: 5}\n", "a.yml")
    second = write(tmp_path, "job_runtime_attributes:\n  m.C.job:\n    max_processes: 2\n", "b.yml")
    assert error_of([first, second]) == (
        f"{second}:3:20: job_runtime_attributes.m.C.job.max_processes: "
        "expected at least min_processes (5), got 2"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yml")
    assert error_of([path]) == f"{path}: cannot read config file: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert error_of([str(tmp_path)]).startswith(f"{tmp_path}: cannot read config file: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yml"
    path.write_bytes(b"interval: 1\nlogfile: caf\xe9\n")
    assert error_of([str(path)]) == f"{path}:2:13: invalid YAML: not UTF-8 text"


def test_control_character(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: 1\nlogfile: a\x07b\n")
    assert error_of([path]).startswith(f"{path}:2:11: invalid YAML: ")


def test_errors_in_the_second_file_name_that_file(tmp_path: Path) -> None:
    good = write(tmp_path, "interval: 1\n", "a.yml")
    bad = write(tmp_path, "\n\nmax_idle_time: soon\n", "b.yml")
    assert error_of([good, bad]).startswith(f"{bad}:3:16: max_idle_time: ")


# --- merging --------------------------------------------------------------------------------


def test_merge_maps_key_by_key_and_lists_replace(tmp_path: Path) -> None:
    first = write(
        tmp_path,
        "namespaces: [a, b]\ninterval: 2\nworker_options:\n  GLOBAL: {x: 1, nested: {p: 1}}\n"
        "  m.C: {x: 2}\njob_runtime_attributes:\n  m.C.job: {min_processes: 1}\n",
        "a.yml",
    )
    second = write(
        tmp_path,
        "namespaces: [c]\nworker_options:\n  GLOBAL:\n    nested: {q: 2}\n    z: 3\n"
        "job_runtime_attributes:\n  m.C.job:\n    max_processes: 4\n",
        "b.yml",
    )
    s = load_settings([first, second])
    assert s.namespaces == ("c",)
    assert s.interval == 2
    assert s.worker_options == {
        "GLOBAL": {"x": 1, "nested": {"p": 1, "q": 2}, "z": 3},
        "m.C": {"x": 2},
    }
    assert s.job_runtime_attributes == {"m.C.job": {"min_processes": 1, "max_processes": 4}}
    assert s.config_files == (first, second)
    assert s.locate("namespaces") == f"{second}:1:1"
    assert s.locate("interval") == f"{first}:2:1"
    assert s.locate("job_runtime_attributes", "m.C.job") == f"{second}:7:3"
    assert s.locate("job_runtime_attributes", "m.C.job", "min_processes") == f"{first}:7:13"
    assert s.locate("worker_options", "m.C", "unset") == f"{first}:5:3"
    assert s.locate("server") == "defaults"


def test_command_line_overrides_files(tmp_path: Path) -> None:
    path = write(tmp_path, "namespaces: [a, b]\ninterval: 2\nconsole_port: 1234\n")
    s = load_settings([path], {"namespaces": ["c"], "interval": "0.5", "console_port": "0"})
    assert (s.namespaces, s.interval, s.console_port) == (("c",), 0.5, 0)
    assert s.locate("namespaces") == "command line"
    assert s.locate("namespaces", 0) == "command line"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"interval": "x"}, "command line: --interval: expected a number >= 0, got 'x'"),
        (
            {"console_port": "1.5"},
            "command line: --console_port: expected an integer 0..65535, got '1.5'",
        ),
        ({"server": "a:0"}, "command line: --server: expected a port 1..65535, got 'a:0'"),
        (
            {"loglevel": "loud"},
            "command line: --loglevel: expected one of: DEBUG, INFO, WARNING, "
            "WARN, ERROR, CRITICAL, FATAL, got 'loud'",
        ),
    ],
)
def test_bad_command_line_values(overrides: dict[str, Any], expected: str) -> None:
    assert error_of([], overrides) == expected


def test_settings_error_builds_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "job_runtime_attributes:\n  m.C.nojob: {max_processes: 2}\n")
    s = load_settings([path])
    err = s.error(("job_runtime_attributes", "m.C.nojob"), "names no job\n(known: m.C.job)")
    assert isinstance(err, ConfigError) and err.exit_status == 78
    assert (
        str(err) == f"{path}:2:3: job_runtime_attributes.m.C.nojob: names no job (known: m.C.job)"
    )
    cli = load_settings([], {"interval": 1})
    assert str(cli.error(("interval",), "too fast")) == "command line: --interval: too fast"
    assert str(cli.error(("pidfile",), "x")) == "defaults: pidfile: x"


def test_options_for_merges_global_under_class_and_copies(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "worker_options:\n  GLOBAL: {a: 1, b: {deep: 1}}\n  m.C: {a: 2, c: 3}\n",
    )
    s = load_settings([path])
    options = options_for(s, "m.C")
    assert options == {"a": 2, "b": {"deep": 1}, "c": 3}
    options["b"]["deep"] = 99
    assert s.worker_options["GLOBAL"]["b"] == {"deep": 1}
    assert options_for(s, "m.Other") == {"a": 1, "b": {"deep": 1}}
    assert options_for(load_settings([]), "m.C") == {}


def test_config_error_is_one_line_and_carries_exit_status() -> None:
    err = ConfigError("a\nb\r\nc")
    assert str(err) == "a b c" and err.exit_status == EX_CONFIG == 78


# --- nothing but Settings or ConfigError, whatever the YAML ---------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["localhost:4730", "a:0", "[::1]", "DEBUG", "m.C.job", "GLOBAL", "m:f"]),
)
_keys = st.one_of(
    st.sampled_from(
        TOP_KEYS + ["GLOBAL", "m.C", "m.C.job", "min_processes", "max_processes", "timeout"]
    ),
    st.text(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)
_documents = st.dictionaries(
    st.one_of(st.sampled_from(TOP_KEYS), st.text(max_size=10)), _values, max_size=6
)


def _check_outcome(files: list[str], overrides: dict[str, Any] | None = None) -> None:
    try:
        result = load_settings(files, overrides)
    except ConfigError as exc:
        message = str(exc)
        assert len(message.splitlines()) == 1 and message == message.strip()
        assert re.match(r"^(.+:\d+:\d+|.+|command line): ", message)
        assert ":" in message
    else:
        assert isinstance(result, Settings)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=_documents)
def test_random_documents_give_settings_or_one_line_error(tmp_path: Path, document: Any) -> None:
    stream = io.StringIO()
    YAML(typ="safe").dump(document, stream)
    _check_outcome([write(tmp_path, stream.getvalue())])


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>,'\"#%@ \n\t1.~?")), max_size=60))
def test_random_text_gives_settings_or_one_line_error(tmp_path: Path, text: str) -> None:
    _check_outcome([write(tmp_path, text)])


@settings(max_examples=150, deadline=None)
@given(overrides=st.dictionaries(st.sampled_from(TOP_KEYS), _values, max_size=4))
def test_random_overrides_give_settings_or_one_line_error(overrides: dict[str, Any]) -> None:
    _check_outcome([], overrides)


def test_schema_file_matches_the_packaged_copy() -> None:
    on_disk = json.loads((REPO / "schema" / "config.schema.json").read_text(encoding="utf-8"))
    assert config.schema() == config.with_process_ceiling(on_disk)


def test_metrics_endpoint_keys(tmp_path: Path) -> None:
    s = load_settings([])
    assert (s.metrics_port, s.metrics_host) == (0, "127.0.0.1")
    path = write(tmp_path, "metrics_port: 9731\nmetrics_host: 0.0.0.0\n")
    s = load_settings([path], {"metrics_port": "9732"})
    assert (s.metrics_port, s.metrics_host) == (9732, "0.0.0.0")
    assert error_of([write(tmp_path, "metrics_port: 70000\n")]).endswith(
        "1:15: metrics_port: expected an integer 0..65535, got 70000")


def test_memory_limits_top_level_and_per_job(tmp_path: Path) -> None:
    s = load_settings([])
    assert (s.max_rss_mb, s.max_workload_mb) == (0, 256)
    path = write(tmp_path, "max_rss_mb: 512\nmax_workload_mb: 16\njob_runtime_attributes:\n"
                           "  m.C.job:\n    max_rss_mb: 128.5\n")
    s = load_settings([path])
    assert (s.max_rss_mb, s.max_workload_mb) == (512.0, 16)
    assert s.job_runtime_attributes["m.C.job"]["max_rss_mb"] == 128.5
    assert error_of([write(tmp_path, "max_workload_mb: 0\n")]).endswith(
        "max_workload_mb: expected an integer 1..4095, got 0")
    assert "max_rss_mb" in error_of([write(tmp_path, "max_rss_mb: -1\n")])
