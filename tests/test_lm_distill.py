"""Drafts trained on what they draft: the model's own continuations, and heads distilled on them."""

import pytest
import torch

from eelib.lm import model as lmlib
from eelib.lm.distill import distill_exit_heads, own_agreement, own_continuations
from eelib.lm.exits import EarlyExitLM

from test_lm_exits import _tiny_text
from test_lm_speculative import _hf, _tiny


def test_own_continuations_are_the_models_greedy_text(tmp_path):
    tiny = _tiny(0, False, tmp_path)
    text = _tiny_text(seed=5)
    seqs = own_continuations(tiny, text, 5, prompt_tokens=6, new_tokens=8, batch_size=2, seed=3)
    assert seqs.shape == (5, 14)
    for row in seqs:  # batched generation without padding: each row is that prompt's greedy continuation
        assert row[6:].tolist() == _hf(tiny, row[:6], 8)
    state = torch.random.get_rng_state()
    again = own_continuations(tiny, text, 5, prompt_tokens=6, new_tokens=8, seed=3)
    assert torch.equal(again, seqs) and torch.equal(torch.random.get_rng_state(), state)  # seeded locally


def test_distilled_heads_agree_more_on_the_models_own_text(tmp_path):
    tiny = _tiny(1, False, tmp_path)
    text = _tiny_text(seed=2)
    train = own_continuations(tiny, text, 24, prompt_tokens=4, new_tokens=12, seed=0)
    test = own_continuations(tiny, text, 12, prompt_tokens=4, new_tokens=12, seed=1)
    every = list(range(1, tiny.n_layers))
    lens = own_agreement(EarlyExitLM(tiny, every), test, prompt_tokens=4)
    adapters, info = distill_exit_heads(tiny, train, text, steps=60, batch_size=8, lr=1e-2, progress=False)
    after = own_agreement(EarlyExitLM(tiny, every, adapters=adapters), test, prompt_tokens=4)
    assert lens[-1] == after[-1] == 1.0  # the final exit is the model: it agrees with itself
    assert sum(after[:-1]) > sum(lens[:-1])  # the exits learnt the model's own continuations
    assert info.steps == 60 and len(info.losses) == 60 and info.losses[-1] < info.losses[0]
    assert not any(p.requires_grad is False for p in tiny.model.parameters())  # the caller's flags given back


def test_bad_input(tmp_path):
    tiny = _tiny(0, False, tmp_path)
    text = _tiny_text(seed=5)
    with pytest.raises(ValueError, match="n must be"):
        own_continuations(tiny, text, 0)
    with pytest.raises(ValueError, match="context window"):
        own_continuations(tiny, text, 2, prompt_tokens=30, new_tokens=30)
    seqs = own_continuations(tiny, text, 2, prompt_tokens=4, new_tokens=4)
    with pytest.raises(ValueError, match="own_share"):
        distill_exit_heads(tiny, seqs, text, steps=1, own_share=1.5, progress=False)
    with pytest.raises(ValueError, match="steps"):
        distill_exit_heads(tiny, seqs, text, steps=0, progress=False)
    with pytest.raises(ValueError, match="sequences"):
        distill_exit_heads(tiny, seqs[0], text, steps=1, progress=False)
