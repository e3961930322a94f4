"""The scaling rule, case by case, plus the invariants it must keep for any figures."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gearman_driver.master.scaling import Decision, JobFigures, ProcessFigures, decide


def busy(pid: int) -> ProcessFigures:
    return ProcessFigures(pid=pid, busy=True, idle_for=0.0)


def idle(pid: int, idle_for: float = 100.0) -> ProcessFigures:
    return ProcessFigures(pid=pid, busy=False, idle_for=idle_for)


def stopping(pid: int, is_busy: bool = False) -> ProcessFigures:
    return ProcessFigures(pid=pid, busy=is_busy, idle_for=100.0, stopping=True)


def job(
    procs: list[ProcessFigures],
    waiting: int | None,
    lo: int = 1,
    hi: int = 8,
    drivers: int = 1,
    max_idle: float = 30.0,
) -> JobFigures:
    return JobFigures(
        name="j",
        min_processes=lo,
        max_processes=hi,
        processes=procs,
        waiting=waiting,
        drivers=drivers,
        max_idle_time=max_idle,
    )


CASES = [
    # --- limits ---
    ("nothing yet, min 2", job([], 0, lo=2), Decision(2, ())),
    ("below min, no data", job([busy(1)], None, lo=3), Decision(2, ())),
    ("at min, nothing waiting", job([idle(1)], 0, lo=1), Decision(0, ())),
    ("over max, idle ones go, longest idle first",
     job([idle(1, 5), idle(2, 50), busy(3), idle(4, 20)], 0, lo=0, hi=2, max_idle=1000),
     Decision(0, (2, 4))),
    ("over max, all busy: wait for them", job([busy(1), busy(2), busy(3)], 9, hi=1),
     Decision(0, ())),
    ("over max, too few idle: only the idle one", job([busy(1), idle(2, 1), busy(3)], 0, hi=1,
     max_idle=1000), Decision(0, (2,))),
    ("over max with no data still enforced", job([idle(1), idle(2)], None, hi=1),
     Decision(0, (1,))),
    ("max 0 switches the job off", job([idle(1, 1), busy(2), idle(3, 2)], 4, lo=0, hi=0),
     Decision(0, (3, 1))),
    ("max 0, nothing running, jobs waiting", job([], 7, lo=0, hi=0), Decision(0, ())),
    # --- scale up ---
    ("all busy, jobs waiting", job([busy(1), busy(2)], 3), Decision(3, ())),
    ("all busy, capped by max", job([busy(1), busy(2)], 50, hi=4), Decision(2, ())),
    ("one idle: no scale-up", job([busy(1), idle(2, 0)], 5), Decision(0, ())),
    ("min 0, none running, jobs waiting", job([], 3, lo=0), Decision(3, ())),
    ("min 0, none running, backlog beyond max", job([], 30, lo=0, hi=5), Decision(5, ())),
    ("at max, all busy", job([busy(1), busy(2)], 9, hi=2), Decision(0, ())),
    ("two drivers share the backlog", job([busy(1)], 5, drivers=2), Decision(3, ())),
    ("three drivers, one job waiting", job([busy(1)], 1, drivers=3), Decision(1, ())),
    ("four drivers, a share beyond our room: our room", job([busy(1)], 100, hi=3, drivers=4),
     Decision(2, ())),
    ("three drivers, a burst: each fills its own room at once",
     job([busy(1)], 3000, hi=8, drivers=3), Decision(7, ())),
    ("drivers 0 counts as 1", job([busy(1)], 2, drivers=0), Decision(2, ())),
    ("below min and all busy: larger of the two", job([busy(1)], 6, lo=3), Decision(6, ())),
    ("below min, backlog small: min wins", job([busy(1)], 1, lo=4), Decision(3, ())),
    ("no data: no scale-up", job([busy(1)], None), Decision(0, ())),
    ("negative waiting is treated as 0", job([busy(1), idle(2)], -3, lo=1), Decision(0, (2,))),
    # --- scale down ---
    ("idle long enough, down to min",
     job([idle(1, 40), idle(2, 31), idle(3, 60)], 0, lo=1), Decision(0, (3, 1))),
    ("idle not long enough", job([idle(1, 10), idle(2, 29.9)], 0, lo=0), Decision(0, ())),
    ("idle exactly max_idle_time", job([idle(1, 30), idle(2, 30)], 0, lo=1), Decision(0, (1,))),
    ("only the old idle ones",
     job([idle(1, 10), idle(2, 45), busy(3), idle(4, 35)], 0, lo=0), Decision(0, (2, 4))),
    ("busy never stopped, even above min", job([busy(1), busy(2)], 0, lo=0), Decision(0, ())),
    ("waiting > 0: no scale-down", job([idle(1, 99), busy(2)], 2, lo=0), Decision(0, ())),
    ("no data: no scale-down", job([idle(1, 99), idle(2, 99)], None, lo=0), Decision(0, ())),
    ("min 0 scales to zero", job([idle(1, 31)], 0, lo=0), Decision(0, (1,))),
    ("over max then idle down to min",
     job([idle(1, 100), idle(2, 90), idle(3, 5), idle(4, 40)], 0, lo=1, hi=3),
     Decision(0, (1, 2, 4))),
    # --- stopping processes ---
    ("stopping ones don't count toward min", job([stopping(1), idle(2)], 0, lo=2),
     Decision(1, ())),
    ("stopping ones are never chosen again", job([stopping(1), idle(2, 99)], 0, lo=0),
     Decision(0, (2,))),
    ("busy stopping one doesn't block scale-up", job([stopping(1, True), busy(2)], 4),
     Decision(4, ())),
    ("idle stopping one doesn't block scale-up", job([stopping(1), busy(2)], 1),
     Decision(1, ())),
    ("only stopping ones, jobs waiting, min 0", job([stopping(1), stopping(2)], 2, lo=0),
     Decision(2, ())),
    ("stopping ones don't count toward max", job([stopping(1), idle(2), idle(3)], 0, hi=2,
     max_idle=1000), Decision(0, ())),
]


@pytest.mark.parametrize(("figures", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(figures: JobFigures, expected: Decision) -> None:
    assert decide(figures) == expected


@pytest.mark.parametrize(("lo", "hi", "starts"), [(-1, 2, 0), (0, -1, 0), (3, 2, 2)])
def test_impossible_limits_never_raise_in_the_loop(lo: int, hi: int, starts: int) -> None:
    """Limits are validated where they enter (config, console, add_job); the rule, which runs
    inside the master's loop, reads impossible ones as: max wins, nothing below 0."""
    assert decide(job([], 0, lo=lo, hi=hi)) == Decision(starts, ())


@st.composite
def job_figures(draw: st.DrawFn) -> JobFigures:
    hi = draw(st.integers(0, 12))
    lo = draw(st.integers(0, hi))
    pids = draw(st.lists(st.integers(1, 10_000), unique=True, max_size=16))
    procs = [
        ProcessFigures(
            pid=pid,
            busy=draw(st.booleans()),
            idle_for=draw(st.floats(0, 1000, allow_nan=False)),
            stopping=draw(st.booleans()),
        )
        for pid in pids
    ]
    return JobFigures(
        name="p",
        min_processes=lo,
        max_processes=hi,
        processes=procs,
        waiting=draw(st.none() | st.integers(-5, 10_000)),
        drivers=draw(st.integers(0, 6)),
        max_idle_time=draw(st.floats(0, 1000, allow_nan=False)),
    )


@given(job_figures())
def test_decide_invariants(figures: JobFigures) -> None:
    d = decide(figures)
    by_pid = {p.pid: p for p in figures.processes}
    live = [p for p in figures.processes if not p.stopping]
    running = len(live)

    assert d.start >= 0
    assert len(set(d.stop)) == len(d.stop)
    for pid in d.stop:
        assert pid in by_pid
        assert not by_pid[pid].busy
        assert not by_pid[pid].stopping
    after = running - len(d.stop) + d.start
    # Never grow beyond max; never shrink beyond max's pull or below min.
    assert d.start == 0 or after <= figures.max_processes
    if d.stop:
        assert running - len(d.stop) >= min(figures.min_processes, running)
        assert d.start == 0
    assert after >= min(figures.min_processes, figures.max_processes)


# -- processes of several slots (concurrency) ------------------------------------------------

def slotted(pid: int, busy_slots: int, slots: int = 10, idle_for: float = 100.0
            ) -> ProcessFigures:
    return ProcessFigures(pid=pid, busy=busy_slots > 0, idle_for=idle_for, slots=slots,
                          busy_slots=busy_slots)


def slots_job(procs: list[ProcessFigures], waiting: int | None, hi: int = 4,
              drivers: int = 1) -> JobFigures:
    return JobFigures(name="s", min_processes=1, max_processes=hi, processes=procs,
                      waiting=waiting, drivers=drivers, max_idle_time=30.0, concurrency=10)


def test_waiting_jobs_within_the_free_slots_start_nothing() -> None:
    assert decide(slots_job([slotted(1, busy_slots=3)], waiting=7)) == Decision()


def test_jobs_beyond_the_free_slots_start_the_processes_their_slots_need() -> None:
    # 3 free slots, 200 waiting: 197 more need 20 processes of 10; room for 3
    assert decide(slots_job([slotted(1, busy_slots=7)], waiting=200)).start == 3
    # 3 free, 15 waiting: 12 more need 2 processes
    assert decide(slots_job([slotted(1, busy_slots=7)], waiting=15)).start == 2
    # with two drivers each takes half: 100 - 3 free -> 10 processes, room for 3
    assert decide(slots_job([slotted(1, busy_slots=7)], waiting=200, drivers=2)).start == 3


def test_a_process_with_one_busy_slot_is_never_stopped() -> None:
    procs = [slotted(1, busy_slots=0), slotted(2, busy_slots=1), slotted(3, busy_slots=0)]
    decision = decide(slots_job(procs, waiting=0))
    assert 2 not in decision.stop and sorted(decision.stop) == [1, 3][:len(decision.stop)]
    assert len(decision.stop) == 2  # down to min 1: the busy one stays


@given(st.lists(st.tuples(st.integers(0, 10), st.floats(0, 1000)), min_size=0, max_size=6),
       st.one_of(st.none(), st.integers(0, 500)), st.integers(1, 3))
def test_slots_invariants(procs: list[tuple[int, float]], waiting: int | None,
                          drivers: int) -> None:
    figures = [slotted(i + 1, b, idle_for=t) for i, (b, t) in enumerate(procs)]
    decision = decide(slots_job(figures, waiting, hi=6, drivers=drivers))
    busy_pids = {p.pid for p in figures if p.busy_slots}
    assert not busy_pids & set(decision.stop)  # a process with a job in hand never stops
    assert len(figures) - len(decision.stop) + decision.start <= 6
    free = sum(p.slots - p.busy_slots for p in figures)
    if waiting is not None and decision.start > max(0, 1 - len(figures)):
        assert waiting > free  # started only for jobs no free slot could take
