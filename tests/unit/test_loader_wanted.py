"""`wanted`: which modules under the namespaces are imported, as Gearman::Driver's Loader."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gearman_driver.config.settings import ConfigError, load_settings
from gearman_driver.jobs.loader import load_jobs
from gearman_driver.jobs.table import LoadError
from gearman_driver.master.driver import Driver

FIXTURES = str(Path(__file__).parent.parent / "fixtures")


@pytest.fixture(autouse=True)
def fresh_modules() -> Iterator[None]:
    """Each test sees tw.wanted unimported, so what a load imports can be checked."""
    def forget() -> None:
        for name in [n for n in sys.modules if n.startswith(("tw.wanted", "tw.wanted_filter"))]:
            del sys.modules[name]
    forget()
    yield
    forget()


def load(wanted: object) -> list[str]:
    specs = load_jobs(["tw.wanted"], [FIXTURES], "s", lambda path: {},
                      wanted=wanted)  # type: ignore[arg-type]
    return sorted(spec.name for spec in specs)


def test_wanted_is_asked_about_every_name_and_only_those_are_imported() -> None:
    asked: list[str] = []

    def only_workers(name: str) -> bool:
        asked.append(name)
        return "worker" in name

    assert load(only_workers) == ["w.scale"]
    assert asked == ["tw.wanted", "tw.wanted.web", "tw.wanted.web.controller",
                     "tw.wanted.worker_scale"]
    assert "tw.wanted.web" not in sys.modules
    assert "tw.wanted.web.controller" not in sys.modules


def test_without_wanted_every_module_is_imported() -> None:
    with pytest.raises(LoadError, match="tw.wanted.web.controller: RuntimeError"):
        load(None)


def test_wanted_as_module_function_and_its_truthiness() -> None:
    assert load("tw.wanted_filter:only_workers") == ["w.scale"]
    assert load(lambda name: name.endswith("scale") and 1) == ["w.scale"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [("tw.wanted_filter:missing", "expected an importable 'module:function', got "
                                  "'tw.wanted_filter:missing'"),
     ("no_such_module_xyz:f", "expected an importable 'module:function'"),
     ("tw.wanted_filter:not_callable", "tw.wanted_filter:not_callable is not callable")],
)
def test_a_bad_reference_is_a_config_error_at_the_key(tmp_path: Path, spec: str,
                                                      message: str) -> None:
    config = tmp_path / "c.yml"
    config.write_text(f"namespaces: [tw.wanted]\nlib: [{FIXTURES}]\nwanted: '{spec}'\n")
    settings = load_settings([str(config)], {})
    with pytest.raises(ConfigError) as failed:
        Driver(settings).load()
    assert str(failed.value).startswith(f"{config}:3:1: wanted: {message}")
    assert "\n" not in str(failed.value)


def test_wanted_that_raises_names_the_module() -> None:
    def broken(name: str) -> bool:
        raise KeyError(name)

    with pytest.raises(LoadError, match=r"^wanted\('tw.wanted'\) failed: KeyError: 'tw.wanted'$"):
        load(broken)


def test_driver_takes_a_callable() -> None:
    driver = Driver(namespaces=["tw.wanted"], lib=[FIXTURES],
                    wanted=lambda name: "worker" in name)
    driver.load()
    assert [job.name for job in driver.get_jobs()] == ["w.scale"]
