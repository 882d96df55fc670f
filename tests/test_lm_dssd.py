"""Dynamic self-speculative decoding (DSSD): exactly the full model's greedy tokens; one core with the fixed exit."""

import math

import pytest
import torch

from eelib.lm import model as lmlib
from eelib.lm.decoder import Decoder
from eelib.lm.exits import EarlyExitLM, course_exits, new_adapters
from eelib.lm.speculative import (calibration_prompts, dynamic_speculative_generate, resolve_dynamic,
                                  self_speculative_generate)

from test_lm_speculative import _hf, _tiny


@pytest.fixture(scope="module", params=[lmlib.COURSE_MODEL, lmlib.COURSE_EE_MODEL])
def shipped(request):
    return lmlib.load_lm(request.param, device="cpu")


def test_exact_on_the_course_models(shipped):
    ee = course_exits(shipped, (1, 2, 4))
    log_v = math.log(shipped.model.config.vocab_size)
    for p in calibration_prompts(shipped, 3, "test"):
        want = _hf(shipped, p, 48)
        for settings in (dict(), dict(measure="entropy", thresholds=[log_v] * 3, max_draft=64, draft_vocab=None),
                         dict(measure="entropy", thresholds=[0.0] * 3),  # every token drafts / none does
                         dict(measure="entropy", thresholds=[0.5, 1.5, 3.0]),
                         dict(measure="max_prob", thresholds=[0.0, 0.0, 0.0], max_draft=3),
                         dict(measure="max_prob", thresholds=[1.0, 1.0, 1.0]),
                         dict(measure="max_prob", thresholds=[0.9, 0.6, 0.3], draft_vocab=256),
                         dict(exit_layers=[2], measure="entropy", thresholds=[2.0])):
            g = dynamic_speculative_generate(ee, p, max_new_tokens=48, **settings)
            assert g.tokens == want, settings
            assert sum(r.tokens for r in g.rounds) == 48


@pytest.mark.parametrize("seed,inverse", [(0, False), (1, True), (2, False)])
def test_exact_on_tiny_random_gpt2(seed, inverse, tmp_path):
    tiny = _tiny(seed, inverse, tmp_path)
    torch.manual_seed(seed)
    adapters = new_adapters(tiny)
    for a in adapters:
        torch.nn.init.normal_(a.proj.weight, std=0.2)
    ee = EarlyExitLM(tiny, [1, 2, 3], adapters=adapters)
    prompt = lmlib.encode(tiny, "the king and the queen of Verona")
    want = _hf(tiny, prompt, 20)
    log_v = math.log(tiny.model.config.vocab_size)
    for thresholds in ([0.0] * 3, [log_v] * 3, [0.5 * log_v, 0.8 * log_v, log_v], [log_v, 0.0, 0.9 * log_v]):
        for max_draft in (1, 3, 50):
            g = dynamic_speculative_generate(ee, prompt, max_new_tokens=20, measure="entropy", thresholds=thresholds,
                                             max_draft=max_draft, draft_vocab=None)
            assert g.tokens == want, (thresholds, max_draft)
            assert all(r.drafted <= max_draft and r.tokens == r.accepted + 1 for r in g.rounds)


def test_exact_at_the_end_of_the_context(tmp_path):
    tiny = _tiny(0, False, tmp_path)
    ee = EarlyExitLM(tiny, [1, 3])
    prompt = lmlib.encode(tiny, " ".join(["the king and the queen"] * 20))[: tiny.context_length - 3]
    room = tiny.context_length - len(prompt) + 1
    for t in (0.0, math.log(tiny.model.config.vocab_size)):
        g = dynamic_speculative_generate(ee, prompt, max_new_tokens=100, measure="entropy", thresholds=[t, t],
                                         max_draft=8, draft_vocab=None)
        assert g.tokens == _hf(tiny, prompt, room) and len(g.tokens) == room


def test_each_token_leaves_at_its_first_confident_exit(shipped):
    """Threshold log V at the first exit drafts every token there: the deeper exits are never asked."""
    ee = course_exits(shipped, (1, 2, 4))
    p = calibration_prompts(shipped, 1, "test")[0]
    log_v = math.log(shipped.model.config.vocab_size)
    g = dynamic_speculative_generate(ee, p, max_new_tokens=40, measure="entropy", thresholds=[log_v, 0.0, 0.0],
                                     max_draft=4, draft_vocab=None)
    assert all(set(r.draft_exits) <= {0} for r in g.rounds) and g.drafted > 0
    ops = dict(((op, size), n) for op, size, n in g.ops)
    positions = ops["step", 1]
    # every position but the rounds' last positions asked exit 0 once; nobody reached exits 1 and 2's heads
    assert ops["draft:entropy", shipped.model.config.vocab_size] == g.drafted
    assert positions == g.drafted + len(g.rounds)
    # nothing drafts below its exit: thresholds 0 (entropy is never below 0 for a real distribution) draft nothing
    none = dynamic_speculative_generate(ee, p, max_new_tokens=40, measure="entropy", thresholds=[0.0, 0.0, 0.0],
                                        draft_vocab=None)
    assert none.drafted == 0 and none.tokens == g.tokens and none.tokens_per_round == 1


def test_the_drafts_skipped_layers_run_with_the_verification(shipped, monkeypatch):
    """A position that drafted at layer l runs its layers above l in the verifying token's block calls:
    every position of a round runs every layer exactly once (no layer twice, none skipped)."""
    ee = course_exits(shipped, (1, 2, 4))
    seen = []
    original = Decoder.block

    def spy(self, l, x, positions):
        rows = [positions + i for i in range(len(x))] if isinstance(positions, int) else list(positions)
        seen.extend((l, p) for p in rows)
        return original(self, l, x, positions)

    monkeypatch.setattr(Decoder, "block", spy)
    p = calibration_prompts(shipped, 1, "test")[0]
    g = dynamic_speculative_generate(ee, p, max_new_tokens=30, measure="entropy", thresholds=[2.0, 3.0, 4.0],
                                     max_draft=5, draft_vocab=None)
    start = len(p) - 1
    seen = [(l, q) for l, q in seen if q >= start]  # the decoding loop, after the prefill
    pos, i = start, 0
    for r in g.rounds:  # the round's positions pos .. pos + drafted: each (layer, position) once, in its calls
        n = shipped.n_layers * (r.drafted + 1)
        cells = seen[i:i + n]
        assert sorted(cells) == sorted((l, q) for l in range(shipped.n_layers) for q in range(pos, pos + r.drafted + 1))
        pos, i = pos + r.tokens, i + n
    assert i == len(seen)


def test_fixed_exit_is_the_same_core(shipped):
    """The fixed-exit loop is the dynamic one with a single exit and max_prob: the same rounds."""
    ee = course_exits(shipped, (2, 4))
    p = calibration_prompts(shipped, 1, "test")[0]
    a = self_speculative_generate(ee, p, max_new_tokens=40, draft_exit=0, threshold=0.3, max_draft=4, draft_vocab=None)
    b = dynamic_speculative_generate(ee, p, max_new_tokens=40, exit_layers=[2], measure="max_prob", thresholds=[0.3],
                                     max_draft=4, draft_vocab=None)
    assert [(r.drafted, r.accepted, r.draft_tokens) for r in a.rounds] == \
        [(r.drafted, r.accepted, r.draft_tokens) for r in b.rounds]


def test_acceptance_is_the_rate_of_judged_drafts(shipped):
    """Every position drafts (entropy threshold log V), so rounds that reject a draft have drafts after it that
    were never judged: the acceptance rate counts the judged ones only."""
    ee = course_exits(shipped, (1, 2, 4))
    log_v = math.log(shipped.model.config.vocab_size)
    p = calibration_prompts(shipped, 2, "test")[1]
    g = dynamic_speculative_generate(ee, p, max_new_tokens=64, measure="entropy", thresholds=[log_v] * 3, max_draft=6,
                                     draft_vocab=None)
    judged = sum(min(r.accepted + 1, r.drafted) for r in g.rounds)  # every draft up to the first rejected one
    assert g.drafted > judged > 0
    assert g.acceptance == pytest.approx(g.accepted / judged)
    assert g.kept_share == pytest.approx(g.accepted / g.drafted) and g.kept_share < g.acceptance


def test_bad_input(shipped):
    ee = course_exits(shipped, (1, 2, 4))
    cases = [
        (dict(exit_layers=[2, 1], thresholds=[1, 1]), "exit_layers"), (dict(exit_layers=[3]), "exit_layers"),
        (dict(exit_layers=[]), "exit_layers"), (dict(thresholds=[1.0, 1.0]), "thresholds"),
        (dict(measure="entropy", thresholds=[1.0, 1.0, -0.5]), "thresholds"),
        (dict(measure="entropy", thresholds=[1.0, 1.0, 99.0]), "thresholds"),
        (dict(measure="max_prob", thresholds=[0.5, 0.5, 1.5]), "thresholds"), (dict(measure="margin"), "measure"),
        (dict(max_draft=0), "max_draft"), (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(draft_vocab=[1.9, 2.9]), "draft_vocab"), (dict(thresholds=["low"] * 3), "thresholds"),
    ]
    for kwargs, word in cases:
        with pytest.raises(ValueError, match=word):
            dynamic_speculative_generate(ee, "ROMEO:", **{"max_new_tokens": 4, **kwargs})
    with pytest.raises(ValueError, match="draft_vocab"):
        self_speculative_generate(ee, "ROMEO:", max_new_tokens=4, draft_vocab=[1.9, 2.9])


def test_shipped_dynamic_defaults(shipped):
    """The calibrated dynamic draft ships beside the heads and is what the loop uses by default."""
    ee = course_exits(shipped, (1, 2, 3, 4))
    s = resolve_dynamic(ee)
    from eelib.lm.speculative import shipped_settings

    saved = shipped_settings(ee)["dynamic"]
    assert [ee.exit_layers[k] for k in s.draft_exits] == saved["exit_layers"]
    assert list(s.thresholds) == saved["thresholds"] and s.measure == saved["measure"]
