"""Energy per generated token (eelib.lm.energy): counted FLOPs of each loop, the prompt taken off."""

from __future__ import annotations

import pytest
import torch

import eelib
from eelib.lm import energy as lm_energy
from eelib.policies import ExitPolicy

N_NEW = 6


@pytest.fixture(scope="module")
def setting():
    lm = eelib.load_lm(eelib.COURSE_MODEL, device="cpu")
    ee = eelib.course_exits(lm, exit_layers=(2, 4))
    ids = eelib.lm.model.encode(lm, eelib.heldout_text("test"))[:24]
    policy = ExitPolicy("max_prob", (0.5, 0.5))
    return ee, ids, policy


@pytest.fixture(scope="module")
def result(setting):
    ee, ids, policy = setting
    return lm_energy.generation_energy(ee, [ids], policy, max_new_tokens=N_NEW, measure=False)


def test_the_loop_without_exits_costs_one_models_pass_per_token_prompt_excluded(setting, result):
    ee, ids, _ = setting
    assert result.loops == lm_energy.ENERGY_LOOPS and result.tokens == N_NEW
    no_exits = result.flops[result.loops.index("no exits")]
    # the generated tokens attend to 24..29 positions: between the model's cost at those two contexts
    # (token_exit_costs counts one layer at a given context); with the prompt's prefill left in, it
    # would be several times more
    low, high = (eelib.token_exit_costs(ee, c).full_flops for c in (len(ids), len(ids) + N_NEW))
    assert 0.97 * low <= no_exits <= 1.03 * high


def test_never_exit_pays_every_early_head_on_top(setting, result):
    ee, _, _ = setting
    heads = eelib.token_exit_costs(ee, 28).head_flops * (ee.num_exits - 1)
    extra = result.flops[result.loops.index("never exit")] - result.flops[result.loops.index("no exits")]
    assert extra == pytest.approx(heads, rel=0.05)
    assert result.relative("never exit") > 1 > 0.99 * result.relative("HF generate")


def test_the_estimate_uses_chapter_3s_assumption_and_says_nothing_was_measured(result):
    assert result.joules_per_flop == eelib.vision.cost.JOULES_PER_FLOP == 2.3e-12
    assert result.joules[0] == pytest.approx(result.flops[0] * 2.3e-12)
    assert result.measured == (None,) * len(result.loops) and "measure=False" in result.measured_note
    with pytest.raises(ValueError, match="'warp'"):
        result.relative("warp")


def test_a_readable_counter_is_measured_per_token_prefill_taken_off(setting, monkeypatch):
    ee, ids, policy = setting
    calls = {"n": 0}

    def fake_measure(fn, device, *, repeats):  # the prefill costs 1 J, a whole loop 1 + 0.5 J per token
        calls["n"] += 1
        return 1.0 if calls["n"] == 1 else 1.0 + 0.5 * N_NEW

    monkeypatch.setattr(lm_energy, "energy_counter", lambda device: (lambda: 0.0))
    monkeypatch.setattr(lm_energy, "measure_energy", fake_measure)
    r = lm_energy.generation_energy(ee, [ids], policy, max_new_tokens=N_NEW, loops=("no exits", "early exit"))
    assert r.measured == (0.5, 0.5) and "measured" in r.measured_note and calls["n"] == 3


def test_without_a_counter_it_says_why(setting, monkeypatch):
    ee, ids, policy = setting

    def unavailable(device):
        raise eelib.EnergyUnavailable("no RAPL counters here")

    monkeypatch.setattr(lm_energy, "energy_counter", unavailable)
    r = lm_energy.generation_energy(ee, [ids], policy, max_new_tokens=2, loops=("no exits",))
    assert r.measured == (None,) and r.measured_note == "not measured: no RAPL counters here"


@pytest.mark.parametrize("kwargs, match", [({"loops": ("warp",)}, "loops"), ({"loops": ()}, "loops"),
                                           ({"max_new_tokens": 0}, "max_new_tokens")])
def test_bad_arguments_are_refused_by_name(setting, kwargs, match):
    ee, ids, policy = setting
    with pytest.raises(ValueError, match=match):
        lm_energy.generation_energy(ee, [ids], policy, measure=False, **kwargs)
    with pytest.raises(ValueError, match="prompts"):
        lm_energy.generation_energy(ee, [], policy, measure=False)
    with pytest.raises(ValueError, match="2 tokens"):
        lm_energy.generation_energy(ee, [ids[:1]], policy, measure=False)


def test_the_figure_states_the_assumption(result):
    from eelib.course import plots

    fig = plots.plot_token_energy(result)
    title = fig.axes[0].get_title()
    assert "2.3 pJ per FLOP" in title and "arithmetic only" in title and f"{N_NEW} tokens" in title
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == list(result.loops)
    import matplotlib.pyplot as plt

    plt.close(fig)
