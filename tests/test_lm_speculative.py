"""Self-speculative decoding: exactly the full model's greedy tokens, the draft's statistics, bad input."""

import math

import pytest
import torch

from eelib.lm import model as lmlib
from eelib.lm import train as lmtrain
from eelib.lm.exits import EarlyExitLM, course_exits, heldout_text, new_adapters
from eelib.lm.generate import Decoder, early_exit_generate
from eelib.lm.draft_tuning import calibrate_speculative
from eelib.lm.speculative import (calibration_prompts, frequent_tokens, resolve_settings, self_speculative_generate,
                                  shipped_settings)

from test_lm_exits import _tiny_text


def _hf(lm, ids, n):
    ids = torch.as_tensor(ids)[None]
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                            min_new_tokens=n, pad_token_id=lm.tokenizer.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module", params=[lmlib.COURSE_MODEL, lmlib.COURSE_EE_MODEL])
def shipped(request):
    return lmlib.load_lm(request.param, device="cpu")


def _tiny(seed: int, inverse: bool, folder):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tokenizer = lmtrain.train_tokenizer(_tiny_text(seed=seed), vocab_size=300)
    eot = tokenizer.convert_tokens_to_ids(lmlib.END_OF_TEXT)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=40, n_embd=32, n_layer=5, n_head=2,
                                       bos_token_id=eot, eos_token_id=eot, scale_attn_by_inverse_layer_idx=inverse))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return lmlib.load_lm(folder, device="cpu")


@pytest.mark.parametrize("seed,inverse", [(0, False), (1, True), (2, False), (3, True)])
def test_exact_on_tiny_random_gpt2(seed, inverse, tmp_path):
    """Random models draft badly (most drafts are rejected): the output must still be the full model's."""
    tiny = _tiny(seed, inverse, tmp_path)
    torch.manual_seed(seed)
    adapters = new_adapters(tiny)
    for a in adapters:  # random trained-looking heads, so that drafts are sometimes right, sometimes wrong
        torch.nn.init.normal_(a.proj.weight, std=0.2)
    ee = EarlyExitLM(tiny, [1, 3], adapters=adapters)
    prompt = lmlib.encode(tiny, "the king and the queen of Verona")
    want = _hf(tiny, prompt, 20)
    for k in (0, 1):
        for threshold in (0.0, 0.05, 1.0):
            for max_draft in (1, 3, 50):
                g = self_speculative_generate(ee, prompt, max_new_tokens=20, draft_exit=k, threshold=threshold,
                                              max_draft=max_draft, draft_vocab=None)
                assert g.tokens == want, (k, threshold, max_draft)
                assert sum(r.tokens for r in g.rounds) == 20
                assert all(r.drafted <= max_draft and r.tokens == r.accepted + 1 for r in g.rounds)


def test_exact_at_the_end_of_the_context(tmp_path):
    tiny = _tiny(0, False, tmp_path)
    ee = EarlyExitLM(tiny, [2])
    prompt = lmlib.encode(tiny, " ".join(["the king and the queen"] * 20))[: tiny.context_length - 3]
    room = tiny.context_length - len(prompt) + 1  # the last position predicts one token past the prompt
    for threshold in (0.0, 1.0):
        g = self_speculative_generate(ee, prompt, max_new_tokens=100, threshold=threshold, max_draft=8,
                                      draft_vocab=None)
        assert g.tokens == _hf(tiny, prompt, room) and len(g.tokens) == room


def test_exact_on_the_course_models(shipped):
    ee = course_exits(shipped, (1, 2, 4))
    prompts = calibration_prompts(shipped, 3, "test")
    for p in prompts:
        want = _hf(shipped, p, 48)
        assert early_exit_generate(ee, p, None, max_new_tokens=48).tokens == want  # the plain loop, as the baseline
        for settings in (dict(), dict(draft_exit=0, threshold=0.0, max_draft=1), dict(draft_exit=1, threshold=0.0,
                         max_draft=64, draft_vocab=None), dict(draft_exit=2, threshold=0.3, draft_vocab=256),
                         dict(draft_exit=1, threshold=1.0)):
            assert self_speculative_generate(ee, p, max_new_tokens=48, **settings).tokens == want, settings


def test_confident_drafts_make_longer_rounds(shipped):
    ee = course_exits(shipped, (2,))
    p = calibration_prompts(shipped, 1, "test")[0]
    loose = self_speculative_generate(ee, p, max_new_tokens=64, threshold=0.0, max_draft=4, draft_vocab=None)
    none = self_speculative_generate(ee, p, max_new_tokens=64, threshold=1.0, max_draft=4, draft_vocab=None)
    assert loose.tokens == none.tokens
    left = 64
    for r in loose.rounds:  # threshold 0 always drafts: max_draft, or as many as the tokens still to make allow
        assert r.drafted == min(4, left - 1)
        left -= r.tokens
    assert none.tokens_per_round < loose.tokens_per_round
    assert 0 <= loose.acceptance <= 1 and loose.accepted == sum(r.accepted for r in loose.rounds)
    # each accepted draft is reported at the draft exit, each verified token at the final exit
    assert sum(s.exit == 0 for s in loose.steps) == loose.accepted
    assert sum(s.layer == shipped.n_layers for s in loose.steps) == len(loose.rounds)


def test_verification_reuses_the_draft(shipped, monkeypatch):
    """Drafting runs layers 1..L one row at a time, verification layers L+1..N once per round for all rows:
    no layer runs twice for a position of a round."""
    ee = course_exits(shipped, (2,))
    calls = []
    original = Decoder.block
    monkeypatch.setattr(Decoder, "block", lambda self, l, x, pos: calls.append((l, x.shape[0])) or
                        original(self, l, x, pos))
    p = calibration_prompts(shipped, 1, "test")[0]
    g = self_speculative_generate(ee, p, max_new_tokens=40, threshold=0.0, max_draft=3, draft_vocab=None)
    calls = calls[shipped.n_layers:]  # after the prompt's prefill (one call per layer)
    rows = [r.drafted + 1 for r in g.rounds]
    lower = [n for l, n in calls if l < 2]
    assert set(lower) == {1} and len(lower) == 2 * sum(rows)
    for l in range(2, shipped.n_layers):
        assert [n for layer, n in calls if layer == l] == rows
    assert g.avg_layers_computed == pytest.approx(shipped.n_layers * sum(rows) / len(g.tokens))


def test_trimmed_draft_vocabulary(shipped):
    ee = course_exits(shipped, (2,))
    top = frequent_tokens(shipped, heldout_text("calibration"), 512)
    assert len(top) == 512 and len(set(top)) == 512
    newline = shipped.tokenizer.convert_tokens_to_ids("Ċ")
    assert newline in top  # the newline is among the most frequent tokens of Shakespeare's verse
    p = calibration_prompts(shipped, 2, "test")[1]
    g = self_speculative_generate(ee, p, max_new_tokens=48, threshold=0.0, max_draft=4, draft_vocab=top)
    assert g.tokens == _hf(shipped, p, 48)
    drafted_ok = [s.token for s in g.steps if s.exit == 0]
    assert set(drafted_ok) <= set(top)  # a draft can only propose a token of its vocabulary


def test_calibrated_defaults_are_shipped(shipped):
    saved = shipped_settings(course_exits(shipped))
    assert saved["by_layer"] and all(1 <= int(l) < shipped.n_layers for l in saved["by_layer"])
    best = max(saved["by_layer"], key=lambda l: saved["by_layer"][l]["speedup"])
    ee = course_exits(shipped, (int(best), shipped.n_layers - 1))
    settings = resolve_settings(ee)
    assert ee.exit_layers[settings.draft_exit] == int(best)
    chosen = saved["by_layer"][best]
    assert settings.threshold == chosen["threshold"] and settings.max_draft == chosen["max_draft"]
    # every setting of the grid was measured, and the chosen one is the fastest of its layer
    rows = [r for r in saved["grid"] if r["layer"] == int(best)]
    assert chosen["speedup"] == max(r["speedup"] for r in rows)


def test_calibration_measures_the_grid(tmp_path):
    tiny = _tiny(0, False, tmp_path)
    ee = EarlyExitLM(tiny, [1, 2])
    prompts = [lmlib.encode(tiny, "the king and"), lmlib.encode(tiny, "my lord shall")]
    out = calibrate_speculative(ee, prompts, thresholds=(0.0, 1.0), max_drafts=(2,), draft_vocabs=(None,),
                                max_new_tokens=6, repeats=1, progress=False)
    assert len(out["grid"]) == 4 and set(out["by_layer"]) == {1, 2}
    for layer, best in out["by_layer"].items():
        assert best["speedup"] == max(r["speedup"] for r in out["grid"] if r["layer"] == layer)


def test_bad_input(shipped):
    ee = course_exits(shipped, (2, 4))
    ok = dict(max_new_tokens=4)
    cases = [
        (dict(draft_exit=2), "draft_exit"), (dict(draft_exit=-1), "draft_exit"), (dict(draft_exit=True), "draft_exit"),
        (dict(threshold=1.5), "threshold"), (dict(threshold=-0.1), "threshold"), (dict(threshold="high"), "threshold"),
        (dict(max_draft=0), "max_draft"), (dict(max_draft=2.5), "max_draft"), (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(draft_vocab=[5, 5]), "draft_vocab"), (dict(draft_vocab=[10 ** 6]), "draft_vocab"),
        (dict(draft_vocab="all"), "draft_vocab"), (dict(draft_vocab=0), "draft_vocab"),
    ]
    for kwargs, word in cases:
        with pytest.raises(ValueError, match=word):
            self_speculative_generate(ee, "ROMEO:", **{**ok, **kwargs})
    with pytest.raises(ValueError, match="empty"):
        self_speculative_generate(ee, "", **ok)
    with pytest.raises(ValueError, match="context window"):
        self_speculative_generate(ee, list(range(shipped.context_length)), **ok)
    assert math.isnan(self_speculative_generate(ee, "ROMEO:", max_new_tokens=1).acceptance)  # one round, no draft


def test_missing_course_ee_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(lmlib._SHIPPED, lmlib.COURSE_EE_MODEL, tmp_path / "nowhere")
    with pytest.raises(lmlib.ModelUnavailableError, match="--early-exit"):
        lmlib.load_lm(lmlib.COURSE_EE_MODEL)


def test_readme_shows_the_benchmark():
    """The README's self-speculative tables are the benchmark's results file, rendered; every loop was exact."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("readme_tables", root / "benchmarks" / "readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    results = json.loads((root / "benchmarks" / "results" / "self_speculative.json").read_text())
    assert set(results["models"]) == {"course", "course-ee"}
    assert all(set(m["exact"].values()) == {1.0} for m in results["models"].values())
    readme = (root / "README.md").read_text()
    for name in ("self_speculative", "self_speculative_loops", "self_speculative_projection"):
        assert getattr(tables, name)() in readme, f"the README does not show {name} of self_speculative.json"


def test_a_one_token_prompt(tmp_path):
    """Nothing to prefill: the first round starts from an empty cache."""
    tiny = _tiny(1, False, tmp_path)
    ee = EarlyExitLM(tiny, [2])
    prompt = lmlib.encode(tiny, "the")[:1]
    assert len(prompt) == 1
    for threshold in (0.0, 1.0):
        g = self_speculative_generate(ee, prompt, max_new_tokens=12, threshold=threshold, max_draft=3, draft_vocab=None)
        assert g.tokens == _hf(tiny, prompt, 12)


def test_reorder_and_upcast_attn_is_honoured(tmp_path):
    """A bfloat16 model with reorder_and_upcast_attn: attention scores and softmax in float32, as transformers
    computes them; the decoder's plain loop and self-speculative decoding give generate's tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(4)
    tokenizer = lmtrain.train_tokenizer(_tiny_text(seed=4), vocab_size=300)
    eot = tokenizer.convert_tokens_to_ids(lmlib.END_OF_TEXT)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=40, n_embd=32, n_layer=4, n_head=2,
                                       bos_token_id=eot, eos_token_id=eot, reorder_and_upcast_attn=True,
                                       scale_attn_by_inverse_layer_idx=True))
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    tiny = lmlib.load_lm(tmp_path, device="cpu", dtype=torch.bfloat16)
    ee = EarlyExitLM(tiny, [2])
    assert Decoder(ee).upcast
    prompt = lmlib.encode(tiny, "the king and the queen of Verona")
    want = _hf(tiny, prompt, 16)
    assert early_exit_generate(ee, prompt, None, max_new_tokens=16).tokens == want
    g = self_speculative_generate(ee, prompt, max_new_tokens=16, draft_exit=0, threshold=0.0, max_draft=3,
                                  draft_vocab=None)
    assert g.tokens == want
