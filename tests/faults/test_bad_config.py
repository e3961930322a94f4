"""Generated bad configs: every one is refused with exit 78 and one line naming where.

Most examples run in-process (load_settings + the driver's loader, exactly what the CLI calls
before it prints); a sample runs the real `gearman-driver --check-config` as a subprocess.
"""

from __future__ import annotations

import gc
import io
import math
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from gearman_driver.config.settings import ConfigError, load_settings
from gearman_driver.jobs.table import LoadError
from gearman_driver.master.driver import Driver
from tests.driver_util import FIXTURES, run_cli
from tests.faults.faultutil import record_figures

VALID: dict[str, Any] = {
    "namespaces": ["tw.basic"],
    "lib": [str(FIXTURES)],
    "server": "127.0.0.1:4730",
    "console_port": 0,
    "console_host": "127.0.0.1",
    "interval": 1,
    "max_idle_time": 0,
    "graceful_timeout": 10,
    "loglevel": "INFO",
    "loglayout": "[%d] %p %m%n",
    "daemonize": False,
    "worker_backend": "pygearman",
    "max_jobs_per_process": 0,
    "max_jobs_jitter": 0,
    "worker_options": {"GLOBAL": {"greeting": "hi"}, "tw.basic.jobs.Basic": {"size": 2}},
    "job_runtime_attributes": {"t.echo": {"min_processes": 1, "max_processes": 2, "timeout": 5},
                               "t.sleep": {"max_processes": 3}},
}

#: Per key: values the schema, the server parser or the loader must refuse.
BAD: dict[str, list[Any]] = {
    "namespaces": [5, "bad name", ["ok", 3], {"a": 1}, "1abc", ["a..b"], [None], True],
    "lib": [5, "", [""], {"x": 1}, [None], [[]]],
    "server": ["", "host:99999", "a b", "h:p", "[zz]", [], [5], "h:1,,h2", "h:0", None, {},
               "h:1:2", ["ok:1", "bad host"]],
    "console_port": [-1, 65536, "80", 1.5, True, None, []],
    "console_host": ["", 5, [], None, {}],
    "interval": [-1, "fast", [], None, math.nan, math.inf, True],
    "max_idle_time": [-0.5, "x", {}, math.inf],
    "graceful_timeout": [0, -1, "x", None],
    "loglevel": ["LOUD", 5, "", None, "INFO "],
    "loglayout": [5, [], None],
    "daemonize": ["yes", 1, None, "true"],
    "worker_backend": ["perl", 1, None, ""],
    "max_jobs_per_process": [-1, 1.5, "10", None],
    "max_jobs_jitter": [-1, 2.5, "x"],
    "worker_options": [[], "x", {"not a class": {}}, {"GLOBAL": 5}, {"GLOBAL": []}],
    "job_runtime_attributes": [
        [], "x", {"t.echo": 5}, {"t.echo": {"bogus": 1}}, {"t.echo": {"min_processes": -1}},
        {"t.echo": {"timeout": 0}}, {"has space": {}}, {"t.nojob": {"min_processes": 1}},
        {"t.echo": {"min_processes": 3, "max_processes": 2}}, {"t.echo": {"max_processes": 0}},
        {"t.echo": {"worker_backend": "perl"}}, {"t.echo": {"max_jobs_per_process": "many"}},
    ],
    "unknown_job_callback": ["nocolon", 5, "mod:func with space", "nomod_xyz_faults:f",
                             "tw.hooks.callbacks:missing"],
    "wanted": ["nocolon", 5, "mod:func with space", "nomod_xyz_faults:f",
               "tw.wanted_filter:missing", "tw.wanted_filter:not_callable"],
    "pidfile": ["", 5],
    "console_socket": ["", 7],
}
KNOWN = set(VALID) | set(BAD)
LOCATION = r"\d+:\d+: \S"

identifiers = st.from_regex(r"\A[a-z_][a-z0-9_]{0,15}\Z", fullmatch=True)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.text(max_size=20), st.floats(allow_nan=False))


def render(doc: Any) -> str:
    yaml = YAML()
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


@st.composite
def wrong_value(draw: st.DrawFn) -> tuple[str, str]:
    key = draw(st.sampled_from(sorted(BAD)))
    doc = dict(VALID)
    doc[key] = draw(st.sampled_from(BAD[key]))
    return f"wrong value for {key}", render(doc)


@st.composite
def unknown_key(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(identifiers.filter(lambda k: k not in KNOWN))
    doc = dict(VALID)
    if draw(st.booleans()):
        doc[name] = draw(scalars)
        return "unknown top-level key", render(doc)
    attrs = dict(VALID["job_runtime_attributes"])
    attrs["t.echo"] = {**attrs["t.echo"], name: draw(scalars)}
    doc["job_runtime_attributes"] = attrs
    return "unknown job attribute", render(doc)


@st.composite
def min_over_max(draw: st.DrawFn) -> tuple[str, str]:
    low = draw(st.integers(0, 40))
    high = draw(st.integers(low + 1, 60))
    job = draw(st.sampled_from(["t.echo", "t.sleep", "t.grp"]))
    doc = dict(VALID)
    attrs: dict[str, Any] = {job: {"min_processes": high, "max_processes": low}}
    if draw(st.booleans()):  # only one side given: the other comes from the decorator
        attrs = {job: {"max_processes": 0}} if low == 0 else attrs
    doc["job_runtime_attributes"] = attrs
    return "min_processes > max_processes", render(doc)


@st.composite
def bad_server(draw: st.DrawFn) -> tuple[str, str]:
    host = draw(st.sampled_from(["h", "127.0.0.1", "[::1]", "a.b-c"]))
    junk = draw(st.sampled_from([
        f"{host}:{draw(st.integers(65536, 10**7))}", f"{host}:", f"{host}:x",
        f"{host} {host}", f"{host}:1,", f",{host}", f"{host}/x", "[::1", "::1:4730",
        f"{host}:-1", f"{host}:{draw(st.integers(1, 9))}{' ' * 2}:2",
    ]))
    doc = dict(VALID)
    doc["server"] = [junk] if draw(st.booleans()) else junk
    return "bad server", render(doc)


@st.composite
def broken_yaml(draw: st.DrawFn) -> tuple[str, str]:
    """Text-level damage that no YAML parser accepts."""
    text = render(VALID)
    lines = text.splitlines(keepends=True)
    at = draw(st.integers(0, len(lines)))
    damage = draw(st.sampled_from([
        "interval: [1, 2\n", "a: {b: 1\n", "\tinterval: 1\n", "interval: 1\ninterval: 2\n",
        "key: 'unterminated\n", "*undefined_alias\n", "x: [\n", "? [\n",
        "server: \"a\n", "%YAML 9.9\n---\n", "---\n- 1\n---\n",
    ]))
    lines.insert(at if not damage.startswith(("interval: 1\ninterval", "%YAML")) else 0, damage)
    if damage.startswith("interval: 1\ninterval"):
        lines = [x for x in lines if not x.startswith("interval:")] + [damage]
    return "broken YAML", "".join(lines)


@st.composite
def not_utf8(draw: st.DrawFn) -> tuple[str, bytes]:
    text = render(VALID).encode()
    at = draw(st.integers(0, len(text)))
    junk = draw(st.sampled_from([b"\xff", b"\xfe\xfe", b"\xc3\x28", b"\x80abc", b"\xed\xa0\x80"]))
    return "not UTF-8", text[:at] + junk + text[at:]


invalid_docs = st.one_of(wrong_value(), unknown_key(), min_over_max(), bad_server(),
                         broken_yaml(), not_utf8())


def check_in_process(path: Path) -> str | None:
    """What `gearman-driver --check-config` does before printing: None, or the error line."""
    try:
        driver = Driver(load_settings([str(path)]))
        driver.load()
    except (ConfigError, LoadError) as exc:
        return str(exc)
    finally:
        gc.enable()  # Driver.load disables it for the master's copy-on-write heap
    return None


def write(directory: Path, content: str | bytes) -> Path:
    path = directory / "config.yml"
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


@pytest.fixture(scope="module")
def workdir() -> Any:
    with tempfile.TemporaryDirectory(prefix="gd-badcfg-") as name:
        yield Path(name)


SEEN: dict[str, int] = {}


def test_the_valid_base_config_loads(workdir: Path) -> None:
    assert check_in_process(write(workdir, render(VALID))) is None


@pytest.mark.slow
def test_every_listed_wrong_value_is_refused_in_one_line(workdir: Path) -> None:
    """Every (key, bad value) pair of BAD, exhaustively (hypothesis samples them below too)."""
    wrong = []
    for key, values in BAD.items():
        for value in values:
            doc = dict(VALID)
            doc[key] = value
            path = write(workdir, render(doc))
            message = check_in_process(path)
            if message is None or "\n" in message or not re.match(
                    re.escape(str(path)) + ":" + LOCATION, message):
                wrong.append((key, value, message))
            SEEN["wrong value (every listed pair)"] = \
                SEEN.get("wrong value (every listed pair)", 0) + 1
    assert not wrong, wrong


@pytest.mark.slow
@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=invalid_docs)
def test_invalid_configs_are_refused_in_one_line(workdir: Path, case: tuple[str, Any]) -> None:
    kind, content = case
    path = write(workdir, content)
    message = check_in_process(path)
    assert message is not None, f"{kind}: accepted:\n{content!r}"
    assert "\n" not in message and "Traceback" not in message, message
    assert re.match(re.escape(str(path)) + ":" + LOCATION, message), message
    kind = "wrong value (sampled)" if kind.startswith("wrong value") else kind
    SEEN[kind] = SEEN.get(kind, 0) + 1


@pytest.mark.slow
@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(
    lambda b: b.decode("latin-1"))))
def test_arbitrary_text_never_gives_a_traceback(workdir: Path, text: str) -> None:
    """Random text is usually refused, sometimes a valid (empty-ish) config: never a crash."""
    path = write(workdir, text)
    message = check_in_process(path)
    if message is not None:
        assert "\n" not in message, message
        assert re.match(re.escape(str(path)) + ":" + LOCATION, message), message
    SEEN["arbitrary text"] = SEEN.get("arbitrary text", 0) + 1


CLI_FLAGS = [("--interval", "fast"), ("--console_port", "99999"), ("--server", "a:b"),
             ("--loglevel", "LOUD"), ("--namespaces", "1bad"), ("--graceful_timeout", "0"),
             ("--max_idle_time", "-1"), ("--worker_backend", "perl"),
             ("--console-port", "-5"), ("--lib", "")]


@pytest.mark.slow
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=st.one_of(invalid_docs.map(lambda c: ("file", c)),
                      st.sampled_from(CLI_FLAGS).map(lambda f: ("flag", f))))
def test_the_real_cli_exits_78_with_one_line(workdir: Path, case: tuple[str, Any]) -> None:
    how, payload = case
    if how == "file":
        path = write(workdir, payload[1])
        result = run_cli("--configfile", str(path), "--check-config", cwd=workdir)
        where = re.escape(str(path)) + ":" + LOCATION
    else:
        path = write(workdir, render(VALID))
        result = run_cli("--configfile", str(path), *payload, "--check-config", cwd=workdir)
        where = "command line: "
    assert result.returncode == 78, (payload, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.match("gearman-driver: " + where, lines[0]), lines[0]
    SEEN["real CLI"] = SEEN.get("real CLI", 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _record_config_figures() -> Iterator[None]:
    """After this module's tests: the counts of the generated examples, for docs/faults.md."""
    yield
    total = sum(SEEN.values())
    if total:
        record_figures("bad config documents (hypothesis)", sent=total, completed=total,
                       failed=0, lost=0, recover_s=None, peak_rss_kb=None,
                       notes="sent = documents checked, completed = handled as required; "
                             + "; ".join(f"{k}: {v}" for k, v in sorted(SEEN.items()))
                             + " — every invalid one refused with one located line (exit 78 "
                               "for the CLI runs); arbitrary text is sometimes a valid config",
                       examples=dict(SEEN))


def test_unwritable_logfile_is_reported_with_its_location(workdir: Path) -> None:
    """A log file that cannot be opened is a config mistake: located, one line, exit 78."""
    doc = dict(VALID)
    doc["logfile"] = str(workdir / "no-such-dir" / "driver.log")
    path = write(workdir, render(doc))
    result = run_cli("--configfile", str(path), "--check-config", cwd=workdir)
    assert result.returncode == 78
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.match("gearman-driver: " + re.escape(str(path)) + ":" + LOCATION, lines[0]), \
        lines[0]
    assert "logfile" in lines[0], lines[0]


def test_missing_namespace_is_reported_at_its_config_location(workdir: Path) -> None:
    """A namespace that does not exist is reported at the `namespaces` entry naming it."""
    doc = dict(VALID)
    doc["namespaces"] = ["tw.basic", "no_such_package_xyz"]
    path = write(workdir, render(doc))
    message = check_in_process(path)
    assert message is not None
    assert re.match(re.escape(str(path)) + ":" + LOCATION, message), message
    assert "namespaces" in message, message
