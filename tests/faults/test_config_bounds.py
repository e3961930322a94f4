"""Reading a configuration is bounded: an alias bomb, a 50 MB file and /dev/zero are refused
with one located line, exit 78 at start, or a refused reload while the console keeps answering.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.driver_util import DriverProcess, run_cli
from tests.faults.faultutil import console, console_config, record_figures

pytestmark = pytest.mark.slow

#: Six levels of ten aliases: 10^6 values inside worker_options once expanded.
BOMB = ("namespaces: [tw.pair]\nworker_options:\n  GLOBAL:\n"
        "    a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"    {n}: &{n} [" + ", ".join([f"*{p}"] * 10) + "]\n"
                  for p, n in zip("abcde", "bcdef", strict=True)))


def make_bad(kind: str, path: Path) -> str:
    """Write the bad config `kind` at `path`; return what its error line must start with."""
    if kind == "alias bomb":
        path.write_text(BOMB)
        return f"{path}:8:8: worker_options.GLOBAL.e: more than"
    if kind == "50 MB file":
        with open(path, "wb") as out:
            out.write(b"#" * (50 * 1024 * 1024))
        return f"{path}: config file larger than"
    path.symlink_to("/dev/zero")
    return f"{path}: config file larger than"


KINDS = ["alias bomb", "50 MB file", "/dev/zero"]
FIGURES: dict[str, dict[str, float]] = {}


@pytest.mark.parametrize("kind", KINDS)
def test_start_refuses_an_unbounded_config_with_one_line(kind: str, tmp_path: Path) -> None:
    expected = make_bad(kind, tmp_path / "bad.yml")
    started = time.monotonic()
    # the timeout only guards against a hang: before the limits this took 42 s to 150 s
    result = run_cli("--configfile", str(tmp_path / "bad.yml"), timeout=30, cwd=tmp_path)
    FIGURES.setdefault(kind, {})["start_s"] = time.monotonic() - started
    assert result.returncode == 78, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"gearman-driver: {expected}"), lines[0]
    assert "(the limit)" in lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_reload_refuses_an_unbounded_config_and_keeps_answering(
        kind: str, gearmand: int, driver_factory: Callable[..., DriverProcess]) -> None:
    port, config = console_config()
    driver = driver_factory(gearmand, {"namespaces": ["tw.pair"], **config})
    assert driver.wait_registered("alpha.opts", 2) and driver.wait_registered("beta.opts", 1)
    assert driver.wait_registered("alpha.work", 1)
    before = sorted(driver.children())
    driver.config_path.unlink()
    expected = make_bad(kind, driver.config_path)
    answered = polls = 0
    started = time.monotonic()
    driver.signal(signal.SIGHUP)
    while "reload failed" not in driver.log() and time.monotonic() - started < 30:
        polls += 1
        answered += any("alpha.opts" in line for line in console(port, "status"))
    FIGURES.setdefault(kind, {}).update(reload_s=time.monotonic() - started, polls=polls,
                                        answered=answered)
    failed = [line for line in driver.log().splitlines() if "reload failed" in line]
    assert len(failed) == 1, driver.log()[-3000:]
    assert re.search(re.escape(f"reload failed: {expected}") + r".*\(the limit\); running on "
                     r"the previous configuration", failed[0]), failed[0]
    assert answered == polls
    assert "Traceback" not in driver.log()
    assert sorted(driver.children()) == before
    assert driver.registered("alpha.opts") == 2 and driver.registered("beta.opts") == 1
    assert driver.proc is not None and driver.proc.poll() is None


@pytest.fixture(scope="module", autouse=True)
def _record() -> Iterator[None]:
    yield
    for kind, figures in FIGURES.items():
        if "start_s" not in figures or "reload_s" not in figures:
            continue
        record_figures(
            f"config read bounds: {kind}", sent=0, completed=0, failed=0, lost=0,
            recover_s=figures["reload_s"], peak_rss_kb=None,
            notes=f"refused at start in {figures['start_s']:.2f}s (exit 78, one line); "
                  f"reload refused in {figures['reload_s']:.2f}s (recover), "
                  f"{figures['answered']:.0f}/{figures['polls']:.0f} console polls answered "
                  f"meanwhile; 3/3 processes kept",
            **{k: round(v, 3) for k, v in figures.items()})

