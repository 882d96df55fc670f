"""Early exits in GPT-2: exit logits, trained heads, per-token decisions, early-exit generation, costs."""

import math
import random

import pytest
import torch

from eelib.lm import model as lmlib
from eelib.lm import train as lmtrain
from eelib.lm.exits import (EarlyExitLM, ExitAdapter, agreement_by_layer, course_exits, heldout_text, load_exit_heads,
                            new_adapters, oracle_layers, oracle_token_exits, perplexity, token_exit_outputs)
from eelib.lm.head_training import train_exit_heads
from eelib.lm.generate import Decoder, early_exit_generate, token_exit_costs
from eelib.outputs import ExitOutputs
from eelib.policies import ExitPolicy, apply_policy, calibrate, candidate_thresholds, evaluate_policy

PROMPTS = ("ROMEO:", "First Citizen:\nWe are accounted poor", "KING RICHARD III:\nNow is the winter")


def _tiny_text(n_lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "king", "and", "queen", "of", "Verona", "shall", "love", "thee", "my", "lord", "ROMEO:"]
    return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + rng.choice(".,!?")
                     for _ in range(n_lines)) + "\n"


@pytest.fixture(scope="module")
def course():
    return lmlib.load_lm(lmlib.COURSE_MODEL, device="cpu")


@pytest.fixture(scope="module", params=[False, True], ids=["gpt2", "inverse-layer-scaling"])
def tiny(request, tmp_path_factory):
    """A random 4-layer GPT-2 saved with save_pretrained and loaded by eelib (the path `gpt2` takes)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = lmtrain.train_tokenizer(_tiny_text(), vocab_size=300)
    eot = tokenizer.convert_tokens_to_ids(lmlib.END_OF_TEXT)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=4, n_head=2,
                                       bos_token_id=eot, eos_token_id=eot,
                                       scale_attn_by_inverse_layer_idx=request.param))
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return lmlib.load_lm(folder, device="cpu")


def _greedy(lm, prompt, n):
    ids = lmlib.encode(lm, prompt)[None]
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                            pad_token_id=lm.tokenizer.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


# --- exits -------------------------------------------------------------------------------------

def test_final_exit_is_exactly_the_models_logits(course):
    ids = lmlib.encode(course, heldout_text("test")[:600])[:200]
    for ee in (EarlyExitLM(course, [2, 4, 6]), course_exits(course, (3,))):
        logits = ee.exit_logits(ids)
        assert logits.shape == (ee.num_exits, len(ids), course.model.config.vocab_size)
        assert torch.equal(logits[-1], course.model(ids[None]).logits[0])


def test_logit_lens_applies_ln_f_once(course):
    ids = lmlib.encode(course, "ROMEO:\nWhat say you?")
    ee = EarlyExitLM(course, [3])
    hs = course.model(ids[None], output_hidden_states=True).hidden_states
    tf, head = course.model.transformer, course.model.lm_head
    assert torch.allclose(ee.exit_logits(ids)[0], head(tf.ln_f(hs[3]))[0])
    assert not torch.allclose(head(tf.ln_f(hs[-1])), head(hs[-1]), atol=1e-2)  # the last state is normalised already


def test_an_untrained_adapter_is_the_logit_lens(tiny):
    ids = lmlib.encode(tiny, "the king and the queen")
    lens = EarlyExitLM(tiny, [1, 2, 3]).exit_logits(ids)
    adapted = EarlyExitLM(tiny, [1, 2, 3], adapters=new_adapters(tiny)).exit_logits(ids)
    assert torch.allclose(lens, adapted, atol=1e-6)


def test_bad_exit_layers(tiny):
    for bad in ([0], [4], [5], [], [2, 1], [1, 1], [1.5]):
        with pytest.raises(ValueError, match="exit_layers"):
            EarlyExitLM(tiny, bad)
    with pytest.raises(ValueError, match="adapters"):
        EarlyExitLM(tiny, [1], adapters=new_adapters(tiny)[:2])
    with pytest.raises(ValueError, match="exit 4 does not exist"):
        EarlyExitLM(tiny, [1, 2]).check_exit(4)


def test_trained_heads_train_save_and_load(tiny, tmp_path):
    text = _tiny_text(seed=1)
    weights = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    flags = [p.requires_grad for p in tiny.model.parameters()]
    adapters, info = train_exit_heads(tiny, text, steps=25, batch_size=4, lr=1e-2, progress=False)
    assert len(info.losses) == 25 and len(info.kl_before) == tiny.n_layers - 1
    assert sum(info.kl_after) < sum(info.kl_before)  # closer to the final distribution than the logit lens
    assert all(torch.equal(v, weights[k]) for k, v in tiny.model.state_dict().items())  # the model stayed frozen
    assert [p.requires_grad for p in tiny.model.parameters()] == flags  # and is given back as it was
    ee = EarlyExitLM(tiny, [1, 3], adapters=adapters)
    ee.save_pretrained(tmp_path / "heads")
    again = EarlyExitLM.from_pretrained(tiny, [1, 3], tmp_path / "heads")
    ids = lmlib.encode(tiny, "my lord of Verona")
    assert torch.allclose(ee.exit_logits(ids), again.exit_logits(ids), atol=2e-2)  # stored in fp16
    with pytest.raises(ValueError, match="course model"):
        EarlyExitLM.from_pretrained(tiny, [1])
    with pytest.raises(FileNotFoundError, match="adapters.safetensors"):
        EarlyExitLM.from_pretrained(tiny, [1], tmp_path)
    with pytest.raises(ValueError, match="no trained heads"):
        EarlyExitLM(tiny, [1]).save_pretrained(tmp_path / "none")
    # the old names still work, and say what replaced them
    with pytest.warns(DeprecationWarning, match="save_pretrained"):
        ee.save_heads(tmp_path / "old")
    with pytest.warns(DeprecationWarning, match="from_pretrained"):
        old = load_exit_heads(tiny, [1, 3], tmp_path / "old")
    assert torch.equal(old.exit_logits(ids), again.exit_logits(ids))


def test_shipped_heads_beat_the_logit_lens(course):
    cal = heldout_text("calibration")[:8000]
    lens = token_exit_outputs(course_exits(course, (2, 4, 6), trained=False), cal).outputs.accuracy_per_exit()
    heads = token_exit_outputs(course_exits(course, (2, 4, 6)), cal).outputs.accuracy_per_exit()
    assert heads[-1] == lens[-1] == 1.0
    assert all(h > l + 0.05 for h, l in zip(heads[:-1], lens[:-1])), (heads, lens)


def test_heldout_text_is_the_last_tenth():
    text = heldout_text()
    assert len(text) == 1_115_394 - 1_115_394 * 9 // 10
    assert heldout_text("calibration") + heldout_text("test") == text
    with pytest.raises(ValueError, match="part must be"):
        heldout_text("train")


# --- per-token analysis -------------------------------------------------------------------------

def test_token_exit_outputs(course):
    ee = course_exits(course, (2, 4))
    text = heldout_text("test")[:3000]
    te = token_exit_outputs(ee, text, max_tokens=300)  # more than one context window of 256
    ids = lmlib.encode(course, text)
    assert torch.equal(te.input_ids, ids[:300]) and torch.equal(te.targets, ids[1:301])
    assert te.outputs.logits.shape == (3, 300, course.model.config.vocab_size)
    assert te.outputs.accuracy_per_exit()[-1] == 1.0  # labels are the full model's own top-1
    direct = ee.exit_logits(ids[256:300])[-1].argmax(-1)
    assert torch.equal(te.outputs.labels[256:], direct)  # the second window starts afresh
    assert perplexity(te.outputs.logits[-1], te.targets) < perplexity(te.outputs.logits[0], te.targets)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        token_exit_outputs(ee, "a")


def test_oracle_layer_is_the_first_from_which_all_later_agree():
    # 4 exits, 5 tokens; labels = the final exit's prediction
    preds = torch.tensor([[7, 1, 2, 3, 9],
                          [7, 5, 2, 3, 9],
                          [1, 5, 2, 4, 9],
                          [7, 5, 2, 4, 8]])
    logits = torch.nn.functional.one_hot(preds, 10).float()
    out = ExitOutputs(logits, preds[-1], ("a", "b", "c", "final"))
    assert oracle_token_exits(out).tolist() == [3, 1, 0, 2, 3]  # token 0 agrees at exit 0 but not at exit 2
    with pytest.warns(DeprecationWarning, match="oracle_token_exits"):
        assert oracle_layers(out).tolist() == [3, 1, 0, 2, 3]  # the old name


def test_calibrated_policy_reaches_its_agreement_on_calibration_text(course):
    ee = course_exits(course, (2, 4))
    te = token_exit_outputs(ee, heldout_text("calibration"), max_tokens=1500)
    costs = token_exit_costs(ee, 128)
    cal = calibrate(te.outputs, costs, measure="max_prob", max_accuracy_drop=0.05)
    assert cal.val.exit_fractions[0] > 0  # some tokens do leave early
    assert evaluate_policy(cal.policy, te.outputs, costs) == cal.val
    # the policy's agreement, counted here token by token against the full model's own top-1 (labels = the final exit's)
    result = apply_policy(cal.policy, te.outputs.logits)
    full = te.outputs.logits[-1].argmax(-1)
    assert (result.predictions == full).double().mean().item() >= 0.95
    # and it is the cheapest shared threshold that meets the target: the next looser candidate does not
    candidates = candidate_thresholds(te.outputs, "max_prob")  # from the most tokens leaving early to the fewest
    i = candidates.index(cal.policy.thresholds[0])
    assert i > 0 and cal.policy.thresholds == (candidates[i],) * 2
    looser = apply_policy(ExitPolicy("max_prob", (candidates[i - 1],) * 2), te.outputs.logits)
    assert (looser.predictions == full).double().mean().item() < 0.95
    assert (looser.exits < 2).sum() > (result.exits < 2).sum()  # it would have let more tokens leave early


# --- generation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", PROMPTS)
def test_no_early_exit_is_the_models_greedy_decoding(course, prompt):
    ee = course_exits(course, (2, 4, 6))
    want = _greedy(course, prompt, 30)
    assert early_exit_generate(ee, prompt, None, max_new_tokens=30).tokens == want
    never = early_exit_generate(ee, prompt, ExitPolicy.never_exit(ee.num_exits), max_new_tokens=30)
    assert never.tokens == want and {s.exit for s in never.steps} == {3}


def test_no_early_exit_on_any_gpt2_config(tiny):
    ee = EarlyExitLM(tiny, [1, 2])
    for prompt in ("the king", "ROMEO: my lord"):
        n = 12
        assert early_exit_generate(ee, prompt, ExitPolicy.never_exit(3, "entropy"), max_new_tokens=n).tokens == \
            _greedy(tiny, prompt, n)


def test_decoder_prefill_matches_the_model(tiny):
    ids = lmlib.encode(tiny, "the king and the queen of Verona shall love thee")
    dec = Decoder(EarlyExitLM(tiny, [1]))
    x = dec.embed(ids, 0)
    hs = tiny.model(ids[None], output_hidden_states=True).hidden_states
    with torch.no_grad():
        for l in range(tiny.n_layers):
            x = dec.block(l, x, 0)
            if l < tiny.n_layers - 1:
                assert torch.allclose(x, hs[l + 1][0], atol=1e-5)


def test_early_exit_skips_the_layers_above_and_copies_the_state_up(course):
    ee = course_exits(course, (2, 4))
    calls = [0] * course.n_layers
    always = ExitPolicy("max_prob", (-math.inf, -math.inf))  # every token leaves at the first exit
    dec = Decoder(ee, kv="copy")
    block = dec.block
    dec.block = lambda l, x, positions: calls.__setitem__(l, calls[l] + 1) or block(l, x, positions)
    gen = early_exit_generate(ee, "ROMEO:", always, max_new_tokens=5, kv="copy", decoder=dec)
    prefill = len(lmlib.encode(course, "ROMEO:")) - 1
    assert [s.layer for s in gen.steps] == [2] * 5 and gen.avg_exit_layer == 2
    assert calls[:2] == [1 + 5] * 2 and calls[2:] == [1] * 6  # layers 3.. ran only in the prefill
    # the skipped layers' keys at the last position come from the state that left after layer 2
    pos = dec.length - 1
    assert dec.keys[2:, :, pos].abs().sum() > 0
    x = dec.embed(torch.tensor([gen.tokens[-2]]), pos)
    with torch.no_grad():
        for l in range(2):
            x = dec.block(l, x, pos)
        blk = course.model.transformer.h[5]
        k = blk.attn.c_attn(blk.ln_1(x))[:, 160:320].view(5, 32)
    assert torch.allclose(dec.keys[5, :, pos], k, atol=1e-5)


def test_teacher_forcing_and_per_token_report(course):
    ee = course_exits(course, (2, 4))
    target = _greedy(course, "ROMEO:", 20)
    policy = ExitPolicy("max_prob", (0.6, 0.6))
    forced = early_exit_generate(ee, "ROMEO:", policy, force=target)
    assert len(forced.steps) == 20 and all(math.isfinite(s.seconds) for s in forced.steps)
    assert all(s.layer in (2, 4, 8) and 0 <= s.confidence <= 1 for s in forced.steps)
    assert all(s.target_logprob <= 0 for s in forced.steps)
    agree = sum(a == b for a, b in zip(forced.tokens, target)) / 20
    assert agree >= 0.5
    assert forced.text.startswith("ROMEO:")
    free = early_exit_generate(ee, "ROMEO:", ExitPolicy("patience", (2, 2)), max_new_tokens=10)
    assert all(s.confidence in (1.0, 2.0, 3.0) or s.exit == 2 for s in free.steps)


def test_counted_flops_match_the_cost_table(course):
    ee = course_exits(course, (2, 4))
    prompt = lmlib.encode(course, "ROMEO:\nWhat")
    policy = ExitPolicy("max_prob", (0.5, 0.5))
    gen = early_exit_generate(ee, prompt, policy, max_new_tokens=12, count_flops=True, kv="copy")
    dec = Decoder(ee)
    with torch.inference_mode():
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as c:
            dec.prefill(prompt[:-1])
    expected = c.get_total_flops()
    for i, s in enumerate(gen.steps):
        expected += token_exit_costs(ee, len(prompt) + i, kv="copy").flops[s.exit]
    assert gen.flops == expected
    assert len({s.exit for s in gen.steps}) > 1  # the check covers more than one exit
    plain = early_exit_generate(ee, prompt, None, max_new_tokens=12, count_flops=True)
    assert plain.flops == c.get_total_flops() + sum(token_exit_costs(ee, len(prompt) + i).full_flops
                                                    for i in range(12))


def test_attention_flops_are_counted(course):
    ee = course_exits(course, (2,))
    d = course.model.config.n_embd
    short, long = token_exit_costs(ee, 10), token_exit_costs(ee, 200)
    assert long.layer_flops - short.layer_flops == 2 * 2 * d * 190  # q.k and att.v, 2 FLOPs per MAC
    assert short.head_flops >= 2 * d * course.model.config.vocab_size
    assert short.kv_flops == 2 * d * 2 * d
    assert short.flops[-1] > short.full_flops  # the final exit also paid for the early heads


def test_bad_generation_input(course):
    ee = course_exits(course, (2, 4))
    with pytest.raises(ValueError, match="prompt is empty"):
        early_exit_generate(ee, "", None)
    with pytest.raises(ValueError, match="prompt is empty"):
        early_exit_generate(ee, [], None)
    with pytest.raises(ValueError, match="context window holds 256"):
        early_exit_generate(ee, list(range(256)), None)
    with pytest.raises(ValueError, match="thresholds has 3 values but the model has 3 exits"):
        early_exit_generate(ee, "ROMEO:", ExitPolicy("max_prob", (0.9, 0.9, 0.9)))
    with pytest.raises(ValueError, match="max_new_tokens"):
        early_exit_generate(ee, "ROMEO:", None, max_new_tokens=0)
    with pytest.raises(ValueError, match="context must be"):
        token_exit_costs(ee, 0)
    gen = early_exit_generate(ee, list(range(250)), None, max_new_tokens=40)
    assert len(gen.steps) == 256 - 250 + 1  # stops where the context window is full


def test_lazy_filling_gives_the_models_own_cache_and_the_simulated_decisions(course):
    ee = course_exits(course, (2, 4))
    ids = lmlib.encode(course, heldout_text("test")[:400])[:60]
    policy = ExitPolicy("max_prob", (0.3, 0.3))
    dec = Decoder(ee, kv="lazy")
    forced = early_exit_generate(ee, ids[:10], policy, force=ids[10:], decoder=dec)
    # decisions and predictions are those of the simulation on the full model's hidden states
    sim = apply_policy(policy, ee.exit_logits(ids)[:, 9:-1])
    assert [s.exit for s in forced.steps] == sim.exits.tolist()
    assert forced.tokens == sim.predictions.tolist()
    assert {s.exit for s in forced.steps} == {0, 1, 2} and dec.filled_rows > 0
    # once a token has gone through every layer, every earlier position's keys and values are the full model's
    last_full = max(i for i, s in enumerate(forced.steps) if s.exit == 2)
    upto = 9 + last_full  # step i reads the token at position 9 + i: positions 0 .. upto are complete
    full = Decoder(ee)
    with torch.no_grad():
        full.prefill(ids[:upto + 1])
    assert torch.allclose(dec.keys[:, :, :upto + 1], full.keys[:, :, :upto + 1], atol=1e-4)
    assert torch.allclose(dec.values[:, :, :upto + 1], full.values[:, :, :upto + 1], atol=1e-4)
    assert all(p > upto for p in dec.pending)  # only tokens after the last deep one still wait
    with pytest.raises(ValueError, match="kv must be one of lazy, copy"):
        Decoder(ee, kv="skip")


def test_copy_up_changes_later_tokens_lazy_does_not(course):
    ee = course_exits(course, (2, 4))
    ids = lmlib.encode(course, heldout_text("test")[:400])[:50]
    policy = ExitPolicy("max_prob", (0.3, 0.3))
    sim = apply_policy(policy, ee.exit_logits(ids)[:, 9:-1]).predictions.tolist()
    lazy = early_exit_generate(ee, ids[:10], policy, force=ids[10:], kv="lazy")
    copy = early_exit_generate(ee, ids[:10], policy, force=ids[10:], kv="copy")
    assert lazy.tokens == sim and copy.tokens != sim
    assert lazy.avg_layers_computed > lazy.avg_exit_layer and copy.avg_layers_computed == copy.avg_exit_layer


def test_threshold_for_agreement_by_hand():
    from eelib.lm.exits import threshold_for_agreement

    scores = torch.tensor([0.9, 0.8, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    agrees = torch.tensor([1, 1, 0, 1, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    assert threshold_for_agreement(scores, agrees, 1.0) == pytest.approx(0.9)  # 0.8 would let a disagreeing token out
    assert threshold_for_agreement(scores, agrees, 0.9) == pytest.approx(0.6)  # one disagreement allowed
    assert threshold_for_agreement(scores, agrees, 0.8) == pytest.approx(0.3)  # two
    assert threshold_for_agreement(scores, agrees, 0.5) == pytest.approx(0.05)  # everyone leaves
    assert threshold_for_agreement(torch.tensor([0.7]), torch.tensor([False]), 0.99) == math.inf
    with pytest.raises(ValueError, match="target must be in"):
        threshold_for_agreement(scores, agrees, 0)
    with pytest.raises(ValueError, match="same length"):
        threshold_for_agreement(scores, agrees[:3], 0.9)


def test_measured_generation_speed(course):
    from eelib.lm.speed import measure_generation_speed

    ee = course_exits(course, (2, 4))
    prompts = [lmlib.encode(course, "ROMEO:"), "KING RICHARD III:\n"]
    speed = measure_generation_speed(ee, prompts, ExitPolicy("max_prob", (0.5, 0.5)), max_new_tokens=6, repeats=1)
    assert speed.tokens == 12 and set(speed.seconds) == {"early exit", "no exits", "never exit", "HF generate"}
    assert all(math.isfinite(t) for t in speed.seconds.values())
    with pytest.raises(ValueError, match="loops must be some of"):
        measure_generation_speed(ee, prompts, ExitPolicy("max_prob", (0.5, 0.5)), loops=("fast",))


def test_retrain_heads_command(tmp_path):
    from pathlib import Path

    from eelib.lm import head_training as lm_exits

    corpus = Path(__file__).resolve().parents[2] / "shared" / "data" / lmtrain.CORPUS_FILE
    if not corpus.is_file():
        pytest.skip("needs ../shared/data/tinyshakespeare.txt")
    assert lm_exits.main(["train", "--corpus", str(corpus), "--steps", "2", "--batch-size", "1",
                          "--out", str(tmp_path)]) == 0
    info = __import__("json").loads((tmp_path / "training.json").read_text())
    assert info["steps"] == 2 and len(info["kl_after"]) == 7
    course = lmlib.load_lm(lmlib.COURSE_MODEL, device="cpu")
    assert EarlyExitLM.from_pretrained(course, [2], tmp_path).num_exits == 2


def test_teacher_forced_eval(course):
    from eelib.lm.generate import teacher_forced_eval

    ee = course_exits(course, (2, 4))
    prompts = [lmlib.encode(course, "ROMEO:"), "KING RICHARD III:\n"]
    policy = ExitPolicy("max_prob", (0.3, 0.3))
    lazy = teacher_forced_eval(ee, prompts, policy, max_new_tokens=16)
    never = teacher_forced_eval(ee, prompts, ExitPolicy.never_exit(3), max_new_tokens=16)
    assert lazy.tokens == never.tokens == 32 and never.agreement == 1.0 and never.avg_exit_layer == 8
    assert never.exit_shares == (0.0, 0.0, 1.0) and sum(lazy.exit_shares) == pytest.approx(1.0)
    assert 2 <= lazy.oracle_avg_layers <= lazy.avg_exit_layer < lazy.avg_layers_computed <= 8
    assert lazy.oracle_avg_layers == never.oracle_avg_layers  # the oracle does not depend on the policy
    with pytest.raises(ValueError, match="prompts is empty"):
        teacher_forced_eval(ee, [], policy)


def test_more_bad_generation_input(course):
    ee = course_exits(course, (2, 4))
    with pytest.raises(ValueError, match="force is empty"):
        early_exit_generate(ee, "ROMEO:", None, force=[])
    with pytest.raises(ValueError, match="the decoder given uses kv='lazy'"):
        early_exit_generate(ee, "ROMEO:", None, kv="copy", decoder=Decoder(ee))
    with pytest.raises(ValueError, match="max_length must be an integer from 1 to the context length"):
        Decoder(ee, max_length=1000)
    with pytest.raises(ValueError, match="exit 3 does not exist"):
        ee.head(3, torch.zeros(1, 160))


def test_oracle_token_exits_with_a_final_exit_that_disagrees_with_the_labels():
    """Labels from another pass (e.g. a float16 near-tie decided otherwise): every index stays in range."""
    preds = torch.tensor([[7, 1, 2],
                          [7, 5, 2],
                          [7, 5, 4]])  # final exit: 7, 5, 4
    logits = torch.nn.functional.one_hot(preds, 10).float()
    labels = torch.tensor([7, 6, 2])  # token 1: no exit predicts 6; token 2: the final exit says 4, not 2
    out = ExitOutputs(logits, labels, ("a", "b", "final"))
    oracle = oracle_token_exits(out)
    assert oracle.tolist() == [0, 1, 2]  # measured against the final exit's own prediction
    assert int(oracle.max()) < out.num_exits
    layer_of = torch.tensor([2, 4, 8])
    assert layer_of[oracle].tolist() == [2, 4, 8]  # what teacher_forced_eval indexes with


def test_generation_speed_is_the_fastest_run_of_each_loop_summed_over_prompts(course, monkeypatch):
    """A fake clock: each loop costs a known time per token; the measured seconds must be exactly those."""
    import eelib._util.device
    from eelib.lm import speed as lm_speed

    now = [0.0]
    monkeypatch.setattr(eelib._util.timing.time, "perf_counter", lambda: now[0])
    real = lm_speed.early_exit_generate

    def fake_generate(ee, ids, policy, *, max_new_tokens, **kwargs):
        never = policy is not None and math.isinf(policy.thresholds[0])
        now[0] += max_new_tokens * (1.0 if policy is None else 1.5 if never else 0.5)
        return real(ee, ids, policy, max_new_tokens=max_new_tokens, **kwargs)

    def fake_hf(ids, *, max_new_tokens, **kwargs):
        now[0] += 2.0 * max_new_tokens
        return ids

    monkeypatch.setattr(lm_speed, "early_exit_generate", fake_generate)
    monkeypatch.setattr(course.model, "generate", fake_hf)
    ee = course_exits(course, (2, 4))
    speed = lm_speed.measure_generation_speed(ee, ["ROMEO:", "KING RICHARD III:\n"],
                                              ExitPolicy("max_prob", (0.5, 0.5)), max_new_tokens=6, repeats=2)
    assert speed.seconds == pytest.approx({"early exit": 6.0, "no exits": 12.0, "never exit": 18.0, "HF generate": 24.0})
    # 12 tokens (2 prompts x 6) in the 6 s, 12 s, 24 s that the fake clock charged
    assert speed.tokens_per_second("early exit") == 2.0 and speed.tokens_per_second("no exits") == 1.0
    assert speed.tokens_per_second("HF generate") == 0.5
    assert speed.speedup("early exit") == pytest.approx(2.0) and speed.speedup("HF generate", "early exit") == 0.25


def test_lazy_mode_flops_against_the_cost_table(course):
    """Lazy mode: each token's own layers and heads as token_exit_costs counts them, plus the deferred rows
    run later (each one layer for one token, at the context of the token that ran it)."""
    ee = course_exits(course, (2, 4))
    prompt = lmlib.encode(course, "ROMEO:\nWhat")
    gen = early_exit_generate(ee, prompt, ExitPolicy("max_prob", (0.4, 0.4)), max_new_tokens=12, count_flops=True,
                              kv="lazy")
    assert len({s.exit for s in gen.steps}) > 1 and gen.filled_layers > 0  # tokens left early and were filled later
    with torch.inference_mode():
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as c:
            Decoder(ee).prefill(prompt[:-1])
    own = 0
    for i, s in enumerate(gen.steps):
        t = token_exit_costs(ee, len(prompt) + i, kv="lazy")
        own += t.flops[-1] if s.exit == ee.num_exits - 1 else s.layer * t.layer_flops + (s.exit + 1) * t.head_flops
    deferred = gen.flops - c.get_total_flops() - own
    first, last = token_exit_costs(ee, len(prompt)), token_exit_costs(ee, len(prompt) + 11)
    assert gen.filled_layers * first.layer_flops <= deferred <= gen.filled_layers * last.layer_flops
    # the cost table's lazy figure counts every skipped layer as run: an upper bound of the real count here
    bound = c.get_total_flops() + sum(token_exit_costs(ee, len(prompt) + 11, kv="lazy").flops[s.exit] for s in gen.steps)
    assert gen.flops <= bound


def test_decoding_refuses_a_model_in_training_mode(course):
    ee = course_exits(course, (2, 4))
    course.model.train()
    try:
        with pytest.raises(ValueError, match="training mode.*eval"):
            early_exit_generate(ee, "ROMEO:", None, max_new_tokens=2)
    finally:
        course.model.eval()


def test_a_decoder_of_another_model_or_too_small_is_refused(course):
    ee = course_exits(course, (2, 4))
    other = course_exits(lmlib.load_lm(lmlib.COURSE_EE_MODEL, device="cpu"), (2, 4))
    with pytest.raises(ValueError, match="decoder"):  # blocks of one model, heads of the other: silently other tokens
        early_exit_generate(ee, "ROMEO:", None, max_new_tokens=4, decoder=Decoder(other))
    with pytest.raises(ValueError, match="decoder"):  # 4 positions for a prompt and 20 new tokens: fails inside torch
        early_exit_generate(ee, "ROMEO:", None, max_new_tokens=20, decoder=Decoder(ee, max_length=4))


def test_exits_evaluate_in_eval_mode_and_give_the_callers_mode_back(tiny):
    """A model left in training mode (dropout 0.1 in GPT2Config) is evaluated without dropout, and stays in training mode."""
    ee = EarlyExitLM(tiny, [1, 3], adapters=new_adapters(tiny))
    text = _tiny_text(40, seed=3)
    ids = lmlib.encode(tiny, text)[:30]
    reference = (ee.exit_logits(ids), token_exit_outputs(ee, text, max_tokens=60).outputs.logits,
                 agreement_by_layer(ee, text, max_tokens=60), lmlib.token_losses(tiny, text))
    heads_reference = train_exit_heads(tiny, text, steps=1, batch_size=2, progress=False)[1]
    tiny.model.train()
    ee.adapters.train()
    try:
        for _ in range(2):  # dropout would differ from call to call
            again = (ee.exit_logits(ids), token_exit_outputs(ee, text, max_tokens=60).outputs.logits,
                     agreement_by_layer(ee, text, max_tokens=60), lmlib.token_losses(tiny, text))
            assert torch.equal(again[0], reference[0]) and torch.equal(again[1], reference[1])
            assert again[2] == reference[2] and torch.equal(again[3], reference[3])
        heads = train_exit_heads(tiny, text, steps=1, batch_size=2, progress=False)[1]
        assert heads.kl_before == heads_reference.kl_before and heads.losses == heads_reference.losses
        assert tiny.model.training and all(m.training for m in tiny.model.modules())  # the caller's mode, given back
        assert ee.adapters.training
    finally:
        tiny.model.eval()
