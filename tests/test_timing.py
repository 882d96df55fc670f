"""Timings that survive a busy laptop (eelib._util.timing.measure) and the thread choice (eelib._util.load).

No wall-clock assertion: a fake clock that the timed calls advance, and a fake /proc/stat or load.
"""

from __future__ import annotations

import pytest
import torch

from eelib._util import load as load_
from eelib._util import timing
from eelib._util.load import MachineLoad

IDLE = MachineLoad(2, 0.05, "fake")
BUSY = MachineLoad(2, 0.98, "fake")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def calls_taking(clock: FakeClock, durations: dict[str, list[float]]):
    """A call per name that advances the clock by its next duration (the last one repeats)."""
    def make(name):
        seq = list(durations[name])

        def call():
            clock.now += seq.pop(0) if len(seq) > 1 else seq[0]
        return call
    return {name: make(name) for name in durations}


def test_measure_stops_as_soon_as_every_spread_is_within_the_tolerance():
    clock = FakeClock()
    calls = calls_taking(clock, {"a": [1.5, 1.0, 1.02, 1.01], "b": [2.0, 3.0, 2.0, 2.02]})
    t = timing.measure(calls, min_repeats=3, tolerance=0.05, budget=100, clock=clock, load=lambda: IDLE)
    # after 3 rounds b's runs are 2.0, 3.0, 2.0 (median 2.0, spread 0), a's 1.5, 1.0, 1.02: median 1.02, 2%
    assert t.rounds == 3 and t.runs["a"] == pytest.approx((1.5, 1.0, 1.02)) and t.runs["b"] == (2.0, 3.0, 2.0)
    assert t.fastest("a") == 1.0 and t.spread("a") == pytest.approx(0.02) and t.settled and t.trusted
    assert t.seconds == pytest.approx(1.5 + 1.0 + 1.02 + 2.0 + 3.0 + 2.0)
    assert t.warning == ""


def test_measure_repeats_until_the_runs_agree():
    clock = FakeClock()
    # a disturbed machine: every other run of a is twice as slow, then it calms down after round 6
    calls = calls_taking(clock, {"a": [2.0, 1.0] * 3 + [1.0], "b": [1.0]})
    t = timing.measure(calls, min_repeats=3, tolerance=0.05, budget=100, clock=clock, load=lambda: IDLE)
    assert t.runs["a"] == (2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 1.0)  # 4 of 7 runs at 1.0: the median is the fastest
    assert t.settled


def test_measure_stops_at_the_budget_and_warns_that_the_runs_spread():
    clock = FakeClock()
    calls = calls_taking(clock, {"a": [1.0, 2.0, 3.0] * 100, "b": [1.0]})
    t = timing.measure(calls, min_repeats=3, tolerance=0.05, budget=17, clock=clock, load=lambda: IDLE)
    assert t.rounds == 6  # 6 + 3 clock seconds per 3 rounds: the budget of 17 is spent after round 6 (18 s)
    assert not t.settled and not t.trusted
    assert "spread by more than 5%" in t.warning and "a 100%" in t.warning and "b " not in t.warning


def test_measure_stops_at_max_repeats_and_keeps_min_repeats_whatever_the_budget():
    clock = FakeClock()
    t = timing.measure(calls_taking(clock, {"a": [10.0, 20.0, 30.0] * 10}), min_repeats=4, max_repeats=5,
                       tolerance=0.05, budget=0.5, clock=clock, load=lambda: IDLE)
    assert t.rounds == 4  # the budget was spent after the first run, but min_repeats comes first
    t = timing.measure(calls_taking(clock, {"a": [10.0, 20.0, 30.0] * 10}), min_repeats=2, max_repeats=5,
                       tolerance=0.05, budget=1e9, clock=clock, load=lambda: IDLE)
    assert t.rounds == 5


@pytest.mark.parametrize("kwargs, match", [({"min_repeats": 0}, "min_repeats"), ({"max_repeats": 2.5}, "max_repeats"),
                                           ({"min_repeats": 5, "max_repeats": 3}, "max_repeats"),
                                           ({"budget": 0}, "budget"), ({"tolerance": -1}, "tolerance")])
def test_measure_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timing.measure({"a": lambda: None}, load=lambda: IDLE, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        timing.measure({}, load=lambda: IDLE)


def test_the_busier_load_of_before_and_after_is_kept_and_warned_about():
    clock = FakeClock()
    readings = iter([IDLE, BUSY])
    t = timing.measure(calls_taking(clock, {"a": [1.0]}), clock=clock, load=lambda: next(readings))
    assert t.settled and t.load is BUSY and not t.trusted
    assert "0.98 of 2 CPUs busy" in t.warning and "run the cell again" in t.warning
    assert "0.98 kept busy" in str(t)


def timings(runs: dict[str, tuple[float, ...]], load: MachineLoad = IDLE) -> timing.Timings:
    return timing.Timings(runs, load, 1.0, 0.05)


def test_the_order_is_checked_for_every_pair_not_only_neighbours():
    # each neighbour overlaps, yet the first and the last are far apart; c's fastest run beats a's median
    t = timings({"a": (1.0, 1.2, 1.3), "b": (1.15, 1.3, 1.4), "c": (0.9, 1.5, 1.5), "d": (2.0, 2.0, 2.1)})
    check = t.order(["a", "b", "c", "d"])
    assert check.unresolved == (("a", "b"), ("a", "c"), ("b", "c"))
    assert check.reversed == () and not check.holds
    assert "3 of 6 pairs" in str(check) and "a/b, a/c, b/c" in str(check)
    reversed_ = t.order(["d", "a"])  # d is slower beyond the spread: a reversed order, not noise
    assert reversed_.reversed == (("d", "a"),) and "a faster than d" in str(reversed_)
    assert timings({"a": (1.0, 1.0, 1.1), "b": (1.2, 1.3, 1.3)}).order(["a", "b"]).holds
    with pytest.raises(ValueError, match="'z'"):
        t.order(["a", "z"])


def test_a_loaded_machine_gives_the_chapter_3_inversion_and_it_is_flagged():
    """The issue's numbers under load: later exits slower than the whole network, reported as reversed."""
    t = timings({"layer2.1": (0.0941, 0.0990, 0.1020), "layer3.0": (0.0889, 0.0950, 0.0990),
                 "final": (0.0768, 0.0790, 0.0800)}, load=BUSY)
    check = t.order(["layer2.1", "layer3.0", "final"])
    assert set(check.reversed) == {("layer2.1", "final"), ("layer3.0", "final")}
    assert not t.trusted and "WARNING" in t.warning


def test_watch_load_measures_before_and_after():
    readings = iter([BUSY, IDLE])
    with timing.watch_load(lambda: next(readings)) as watch:
        pass
    assert watch.before is BUSY and watch.after is IDLE and watch.load is BUSY
    assert "0.98 of 2 CPUs" in watch.warning and "WARNING" in str(watch)
    quiet = iter([IDLE, IDLE])
    with timing.watch_load(lambda: next(quiet)) as watch:
        with pytest.raises(RuntimeError, match="with block"):
            watch.load
    assert watch.warning == "" and "WARNING" not in str(watch)


# --- the machine's load --------------------------------------------------------------------------

STAT = "cpu  {a} 0 {b} {idle} 0 0 0 0 0 0\ncpu0 {a} 0 0 {idle0} 0 0 0 0 0 0\ncpu1 0 0 {b} {idle1} 0 0 0 0 0 0\nintr 1 2\n"


def fake_stat(*states):
    """/proc/stat texts: each state (user jiffies of cpu0, system jiffies of cpu1, idle of each)."""
    texts = iter([STAT.format(a=a, b=b, idle=i0 + i1, idle0=i0, idle1=i1) for a, b, i0, i1 in states])
    return lambda: next(texts)


def test_read_proc_stat_counts_busy_and_total_jiffies_of_the_given_cpus():
    text = STAT.format(a=30, b=50, idle=120, idle0=70, idle1=50)
    assert load_.read_proc_stat(text, None) == (80, 200)  # the aggregate line
    assert load_.read_proc_stat(text, [0]) == (30, 100)
    assert load_.read_proc_stat(text, [0, 1]) == (80, 200)


def test_machine_load_is_other_programs_cpu_time_over_the_window(monkeypatch):
    monkeypatch.setattr(load_, "_affinity", lambda: [0, 1])
    own = iter([5.0, 5.1])  # this process used 0.1 CPU seconds in the 0.25 s window: 0.4 CPUs
    # over the window: cpu0 busy 100 of 100 jiffies, cpu1 busy 40 of 100: 1.4 CPUs busy in all
    load = load_.machine_load(0.25, read=fake_stat((0, 0, 0, 0), (100, 40, 0, 60)), sleep=lambda s: None,
                              own_cpu=lambda: next(own))
    assert load == MachineLoad(2, 1.0, "/proc/stat over 0.25 s")
    with pytest.raises(ValueError, match="window"):
        load_.machine_load(0)


@pytest.mark.parametrize("busy, free", [(0.0, 2), (0.4, 2), (0.5, 2), (0.6, 1), (0.98, 1), (1.5, 1), (1.7, 0),
                                        (None, 2)])
def test_a_cpu_used_more_than_half_by_others_is_not_free(busy, free):
    assert MachineLoad(2, busy, "fake").free == free
    assert MachineLoad(2, busy, "fake").loaded == (free < 2)


@pytest.fixture
def threads(monkeypatch):
    """Restore PyTorch's thread count; no EELIB_THREADS or OMP_NUM_THREADS from the caller."""
    before = torch.get_num_threads()
    monkeypatch.delenv(load_.ENV_THREADS, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(load_, "_DEFAULT_THREADS", [4])
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("load, expected", [(MachineLoad(4, 0.1, "fake"), 4), (MachineLoad(4, 0.98, "fake"), 3),
                                            (MachineLoad(2, 0.98, "fake"), 1), (MachineLoad(2, 3.0, "fake"), 1),
                                            (MachineLoad(8, 0.0, "fake"), 4), (MachineLoad(2, None, "fake"), 2)])
def test_choose_threads_uses_the_free_cpus_at_most_pytorchs_default(threads, load, expected):
    choice = load_.choose_threads(load=load)
    assert choice.threads == expected and torch.get_num_threads() == expected
    assert choice.default == 4 and f"uses {expected} CPU thread(s)" in str(choice)
    if expected < min(4, load.cpus):
        assert "wait for each other" in choice.reason


def test_choose_threads_obeys_eelib_threads_and_leaves_omp_num_threads_alone(threads, monkeypatch):
    monkeypatch.setenv(load_.ENV_THREADS, "3")
    assert load_.choose_threads(load=BUSY).threads == 3 and torch.get_num_threads() == 3
    monkeypatch.setenv(load_.ENV_THREADS, "many")
    with pytest.raises(ValueError, match="EELIB_THREADS='many'"):
        load_.choose_threads(load=BUSY)
    monkeypatch.delenv(load_.ENV_THREADS)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    choice = load_.choose_threads(load=BUSY)
    assert choice.threads == 2 and "OMP_NUM_THREADS=2" in choice.reason
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert load_.choose_threads(load=BUSY, apply=False).threads == 1 and torch.get_num_threads() == 2
