"""The developer's API: decorator, attributes, prefix, groups, option merging, the runner."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from gearman_driver import Worker, job, journal
from gearman_driver.child.runner import make_runner, to_result_bytes
from gearman_driver.config.settings import load_settings, options_for
from gearman_driver.jobs.loader import (
    apply_runtime_attributes,
    job_specs,
    load_jobs,
    worker_classes,
)
from gearman_driver.jobs.table import LoadError
from gearman_driver.scoreboard import Scoreboard

FIXTURES = str(Path(__file__).parent.parent / "fixtures")


def specs_by_name(worker: Worker) -> dict[str, Any]:
    return {spec.name: spec for spec in job_specs(worker)}


class Plain(Worker):
    @job
    def bare(self, job: Any, workload: bytes) -> bytes:
        return workload

    @job(min_processes=3)
    def only_min(self, job: Any, workload: bytes) -> bytes:
        return workload

    @job(min_processes=0, max_processes=0)
    def off(self, job: Any, workload: bytes) -> bytes:
        return workload

    def not_a_job(self) -> None:
        pass


def test_bare_job_means_one_process_and_default_prefix() -> None:
    specs = specs_by_name(Plain(server="s"))
    prefix = f"{__name__}.Plain."
    assert set(specs) == {prefix + "bare", prefix + "only_min", prefix + "off"}
    bare = specs[prefix + "bare"]
    assert (bare.min_processes, bare.max_processes) == (1, 1)
    assert bare.functions == (prefix + "bare",)
    assert (specs[prefix + "only_min"].min_processes,
            specs[prefix + "only_min"].max_processes) == (3, 3)
    assert (specs[prefix + "off"].min_processes, specs[prefix + "off"].max_processes) == (0, 0)


class Prefixed(Worker):
    prefix = "foo_bar_"

    @job
    def scale_image(self, job: Any, workload: bytes) -> bytes:
        return workload


class MethodPrefix(Worker):
    def prefix(self) -> str:  # type: ignore[override]
        return f"dyn.{self.options['zone']}."

    @job
    def go(self, job: Any, workload: bytes) -> bytes:
        return workload


def test_prefix_attribute_or_method() -> None:
    assert list(specs_by_name(Prefixed(server="s"))) == ["foo_bar_scale_image"]
    assert list(specs_by_name(MethodPrefix(server="s", zone="eu"))) == ["dyn.eu.go"]


class Grouped(Worker):
    prefix = "g."

    @job(process_group="pair", min_processes=2, max_processes=5)
    def one(self, job: Any, workload: bytes) -> bytes:
        return workload

    @job(process_group="pair")
    def two(self, job: Any, workload: bytes) -> bytes:
        return workload


def test_process_group_is_one_job_with_both_functions() -> None:
    specs = specs_by_name(Grouped(server="s"))
    assert list(specs) == ["g.pair"]
    assert specs["g.pair"].functions == ("g.one", "g.two")
    assert (specs["g.pair"].min_processes, specs["g.pair"].max_processes) == (2, 5)


def test_process_group_with_two_different_limits_is_a_load_error() -> None:
    class Clash(Worker):
        @job(process_group="p", max_processes=2)
        def a(self, job: Any, workload: bytes) -> bytes:
            return workload

        @job(process_group="p", max_processes=3)
        def b(self, job: Any, workload: bytes) -> bytes:
            return workload

    with pytest.raises(LoadError, match=r"Clash\.p: process group gives max_processes twice"):
        job_specs(Clash(server="s"))


def test_min_greater_than_max_is_a_load_error() -> None:
    class Bad(Worker):
        @job(min_processes=5, max_processes=2)
        def a(self, job: Any, workload: bytes) -> bytes:
            return workload

    with pytest.raises(LoadError, match=r"Bad\.a: min_processes \(5\) is greater than "
                                        r"max_processes \(2\)"):
        job_specs(Bad(server="s"))


class Attributed(Worker):
    prefix = "a."
    default_attributes = {"min_processes": 2, "max_processes": 6, "encode": True}
    override_attributes = {"max_processes": 4}

    @job(min_processes=1, max_processes=10)
    def first(self, job: Any, workload: bytes) -> bytes:
        return workload

    @job
    def second(self, job: Any, workload: bytes) -> bytes:
        return workload


def test_default_before_and_override_after_the_method_attributes() -> None:
    specs = specs_by_name(Attributed(server="s"))
    assert (specs["a.first"].min_processes, specs["a.first"].max_processes) == (1, 4)
    assert (specs["a.second"].min_processes, specs["a.second"].max_processes) == (2, 4)
    assert specs["a.second"].methods[0].encode is not None


def test_unknown_attribute_in_default_attributes_is_a_load_error() -> None:
    class Typo(Worker):
        default_attributes = {"max_proceses": 2}

        @job
        def a(self, job: Any, workload: bytes) -> bytes:
            return workload

    with pytest.raises(LoadError, match="unknown job attribute 'max_proceses'"):
        job_specs(Typo(server="s"))


PERL_SPELLINGS = {"Decode": "decode", "Encode": "encode", "MinProcesses": 2,
                  "MaxProcesses": 3, "ProcessGroup": "g", "MinChilds": 2, "MaxChilds": 3}


@pytest.mark.parametrize("where", ["default_attributes", "override_attributes"])
@pytest.mark.parametrize("perl", sorted(PERL_SPELLINGS))
def test_perl_attribute_spellings_are_refused_in_the_attribute_dicts(where: str,
                                                                     perl: str) -> None:
    """Gearman::Driver's `default_attributes => { Decode => ... }` keys do not carry over."""
    def body(self: Worker, job: Any, workload: bytes) -> bytes:
        return workload

    cls = type("PerlStyle", (Worker,), {where: {perl: PERL_SPELLINGS[perl]}, "a": job(body),
                                        "decode": lambda self, data: data,
                                        "encode": lambda self, data: data})
    with pytest.raises(LoadError, match=rf"\.{where}: unknown job attribute '{perl}' "
                                        r"\(expected one of: min_processes, max_processes"):
        job_specs(cls(server="s"))


def test_snake_case_keys_work_in_the_attribute_dicts() -> None:
    class SnakeCase(Worker):
        default_attributes = {"decode": "from_json", "min_processes": 2, "max_processes": 3}
        override_attributes = {"encode": True}

        def from_json(self, workload: bytes) -> Any:
            return workload

        def encode(self, result: Any) -> bytes:
            return bytes(result)

        @job
        def a(self, job: Any, workload: bytes) -> bytes:
            return workload

    (spec,) = job_specs(SnakeCase(server="s"))
    assert (spec.min_processes, spec.max_processes) == (2, 3)
    assert spec.methods[0].decode is not None and spec.methods[0].encode is not None


def test_perl_spelling_in_the_decorator_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Decode"):
        job(Decode=True)  # type: ignore[call-overload]


def test_encode_naming_no_method_is_a_load_error() -> None:
    class NoCoder(Worker):
        @job(encode="missing")
        def a(self, job: Any, workload: bytes) -> bytes:
            return workload

    with pytest.raises(LoadError, match="encode='missing' names no method"):
        job_specs(NoCoder(server="s"))


class FakeJob:
    handle = b"H:1"
    unique = b""
    function = "f"

    def __init__(self, workload: bytes) -> None:
        self.workload = workload


class Coded(Worker):
    prefix = "c."

    def __init__(self, *, server: str, **options: Any) -> None:
        super().__init__(server=server, **options)
        self.calls: list[str] = []

    @job(decode=True, encode=True)
    def work(self, job: Any, workload: Any) -> Any:
        self.calls.append("work")
        if workload == "raise":
            raise ValueError("bad workload")
        return {"n": workload}

    @job
    def returns_int(self, job: Any, workload: bytes) -> Any:
        return 7

    @job(exceptions=True)
    def loud(self, job: Any, workload: bytes) -> Any:
        raise KeyError(workload.decode())

    def decode(self, workload: bytes) -> str:
        return workload.decode()

    def encode(self, result: Any) -> str:
        return repr(result)

    def begin(self, job: Any, workload: Any) -> None:
        self.calls.append(f"begin:{workload}")

    def end(self, job: Any, workload: Any) -> None:
        self.calls.append(f"end:{workload}")


def runner_for(worker: Worker, name: str) -> tuple[Any, Any]:
    spec = specs_by_name(worker)[name]
    board = Scoreboard(2)
    slot = board.allocate()
    writer = board.child_writer(slot)
    writer.ready(1)
    return make_runner(spec, spec.methods[0], writer, lambda job: None), (board, slot)


def test_runner_decodes_hooks_and_encodes_and_records_errors() -> None:
    worker = Coded(server="s")
    run, (board, slot) = runner_for(worker, "c.work")
    assert run(FakeJob(b"x")).data == b"{'n': 'x'}"
    assert worker.calls == ["begin:x", "work", "end:x"]
    failed = run(FakeJob(b"raise"))
    assert (failed.status, failed.data) == ("fail", b"")  # the text stays in log and scoreboard
    assert worker.calls[-1] == "end:raise"  # end runs when the job raised
    view = board.read(slot)
    assert view.jobs_done == 2
    assert view.last_error > 0 and view.last_error_msg == "ValueError: bad workload"


def test_runner_sets_the_journal_job_context_for_the_job_only() -> None:
    """Lines a job logs carry its function and handle (journal fields); later lines do not.
    With nothing to do after a job (no recycling limit), the runner calls nothing."""
    seen: list[object] = []

    class Logged(Worker):
        @job
        def work(self, job: Any, workload: bytes) -> bytes:
            seen.append(journal.job_in_hand)
            return workload

    spec = job_specs(Logged(server="s"))[0]
    board = Scoreboard(1)
    writer = board.child_writer(board.allocate())
    run = make_runner(spec, spec.methods[0], writer, None)
    assert run(FakeJob(b"x")) == ("complete", b"x")
    assert seen == [(spec.methods[0].function, b"H:1")] and journal.job_in_hand is None
    assert board.read(writer.slot).jobs_done == 1


def test_runner_fails_a_non_bytes_result_with_function_and_type() -> None:
    run, (board, slot) = runner_for(Coded(server="s"), "c.returns_int")
    result = run(FakeJob(b""))
    assert result.status == "fail"
    assert "c.returns_int returned int" in board.read(slot).last_error_msg


def test_a_job_with_exceptions_sends_the_exception_text() -> None:
    run, (board, slot) = runner_for(Coded(server="s"), "c.loud")
    result = run(FakeJob(b"nope"))
    assert (result.status, result.data) == ("exception", b"KeyError: 'nope'")
    assert board.read(slot).last_error_msg == "KeyError: 'nope'"


def test_exceptions_attribute_must_be_a_bool() -> None:
    class Vague(Worker):
        @job(exceptions="yes")  # type: ignore[arg-type]
        def a(self, job: Any, workload: bytes) -> bytes:
            return workload

    with pytest.raises(LoadError, match=r"Vague\.a: exceptions must be true or false, got 'yes'"):
        job_specs(Vague(server="s"))


def test_result_coercion() -> None:
    assert to_result_bytes("f", b"a") == b"a"
    assert to_result_bytes("f", "é") == "é".encode()
    assert to_result_bytes("f", None) == b""
    with pytest.raises(TypeError, match="f returned dict"):
        to_result_bytes("f", {})


def test_options_merge_global_then_class(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("worker_options:\n  GLOBAL: {a: 1, b: 2}\n  m.C: {b: 3, c: 4}\n")
    settings = load_settings([str(config)])
    assert options_for(settings, "m.C") == {"a": 1, "b": 3, "c": 4}
    assert options_for(settings, "m.Other") == {"a": 1, "b": 2}


def test_loader_registers_inherited_jobs_under_the_subclass_and_skips_imports() -> None:
    sys.path.insert(0, FIXTURES)
    try:
        specs = load_jobs(["tw.inherit"], [], "s", lambda path: {})
    finally:
        sys.path.remove(FIXTURES)
    names = sorted(spec.name for spec in specs)
    assert names == ["tw.inherit.base.Base.shared", "tw.inherit.child.Child.own",
                     "tw.inherit.child.Child.shared"]
    from tw.inherit import child

    assert worker_classes([child]) == [child.Child]


def test_runtime_attributes_override_and_unknown_key_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("job_runtime_attributes:\n  g.pair: {min_processes: 0, max_processes: 9}\n"
                      "  g.nope: {max_processes: 1}\n")
    settings = load_settings([str(config)])
    specs = job_specs(Grouped(server="s"))
    with pytest.raises(Exception) as info:
        apply_runtime_attributes(specs, settings.job_runtime_attributes, settings.error)
    assert str(info.value).startswith(f"{config}:3:3: job_runtime_attributes.g.nope: names no job")
    good = tmp_path / "good.yml"
    good.write_text("job_runtime_attributes:\n  g.pair: {min_processes: 0, max_processes: 9}\n")
    settings = load_settings([str(good)])
    [spec] = apply_runtime_attributes(specs, settings.job_runtime_attributes, settings.error)
    assert (spec.min_processes, spec.max_processes) == (0, 9)


def test_runtime_min_above_max_after_override_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("job_runtime_attributes:\n  g.pair:\n    min_processes: 6\n")
    settings = load_settings([str(config)])
    with pytest.raises(Exception, match=r"c\.yml:3:5: job_runtime_attributes\.g\.pair\."
                                        r"min_processes: min_processes \(6\) is greater than "
                                        r"max_processes"):
        apply_runtime_attributes(job_specs(Grouped(server="s")),
                                 settings.job_runtime_attributes, settings.error)


def test_constructor_rejecting_an_option_names_class_and_option(tmp_path: Path) -> None:
    class Strict(Worker):
        def __init__(self, *, server: str) -> None:
            super().__init__(server=server)

        @job
        def a(self, job: Any, workload: bytes) -> bytes:
            return workload

    from gearman_driver.jobs.loader import build_worker

    with pytest.raises(LoadError) as info:
        build_worker(Strict, "s", {"colour": "red"})
    message = str(info.value)
    assert "Strict" in message and "colour" in message and "\n" not in message
