"""Chapter 6's exercise checks (early exit in GPT-2): the logit lens's predictions per layer and
the oracle exit of each token."""

from __future__ import annotations

from typing import Callable

import torch

from eelib.course.checks._common import _call, _tensor, student_check


def _tiny_gpt2(seed: int = 0, n_layer: int = 4):
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=n_layer, n_head=2,
                                           bos_token_id=0, eos_token_id=0)).eval()
        with torch.no_grad():  # a trained-looking ln_f: at initialisation (weight 1, bias 0) it is idempotent
            model.transformer.ln_f.weight.uniform_(0.5, 2.0)
            model.transformer.ln_f.bias.normal_(0, 0.5)
        ids = torch.randint(0, 50, (1, 12))
    return model, ids


@student_check
def check_layer_predictions(layer_predictions: Callable) -> None:
    """Check ``layer_predictions(model, hidden_states)`` -> ``(n_layers, T)`` top-1 token per layer (logit lens)."""
    model, ids = _tiny_gpt2()
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
        tf, head = model.transformer, model.lm_head
        expected = torch.stack([head(tf.ln_f(h)) for h in hs[1:-1]] + [head(hs[-1])])[:, 0].argmax(-1)
        twice = torch.stack([head(tf.ln_f(h)) for h in hs[1:]])[:, 0].argmax(-1)
        no_ln = torch.stack([head(h) for h in hs[1:]])[:, 0].argmax(-1)
        shifted = torch.stack([head(tf.ln_f(h)) for h in hs[:-2]] + [head(hs[-1])])[:, 0].argmax(-1)
    got = _call("layer_predictions", layer_predictions, model, hs)
    got = _tensor("layer_predictions", got, "a (n_layers, T) tensor of token ids")
    if got.ndim == 3 and got.shape[1] == 1:
        got = got[:, 0]
    n = len(hs) - 1
    if got.shape == (n + 1, ids.shape[1]):
        raise AssertionError(f"got {n + 1} rows for {n} layers. Hint: hidden_states[0] is the embeddings (before "
                             f"any block); the layers are hidden_states[1:] .")
    assert got.shape == expected.shape, f"return a (n_layers, T) = {tuple(expected.shape)} tensor of token ids, got {tuple(got.shape)}"
    if not torch.equal(got.long(), expected):
        if torch.equal(got.long(), twice):
            hint = ("the last hidden state already has ln_f applied (Hugging Face applies it inside the model): "
                    "use lm_head(h) for it, lm_head(ln_f(h)) for the others")
        elif torch.equal(got.long(), no_ln):
            hint = "apply the final layer norm before the head for the intermediate layers: lm_head(ln_f(h))"
        elif torch.equal(got.long(), shifted):
            hint = "hidden_states[0] is the embeddings; the exit after layer l is hidden_states[l], l = 1..n"
        else:
            hint = "for layer l = 1..n-1: lm_head(ln_f(hidden_states[l])).argmax(-1); for the last: lm_head(hidden_states[n])"
        raise AssertionError(f"the predictions differ from the logit lens at "
                             f"{int((got.long() != expected).sum())} of {expected.numel()} places. Hint: {hint}.")
    print(f"Correct: the logit lens's top-1 token at each of the {n} layers.")


@student_check
def check_oracle_exit(oracle_exit: Callable) -> None:
    """Check ``oracle_exit(predictions, final)`` -> ``(T,)`` earliest exit from which every later exit agrees."""
    from eelib.outputs import ExitOutputs
    from eelib.lm.exits import oracle_token_exits

    with torch.random.fork_rng():
        torch.manual_seed(5)
        final = torch.randint(0, 6, (40,))
        preds = torch.where(torch.rand(4, 40) < torch.tensor([[0.4], [0.6], [0.8], [1.0]]), final, torch.randint(0, 6, (4, 40)))
    preds[-1] = final
    expected = oracle_token_exits(ExitOutputs(torch.nn.functional.one_hot(preds, 6).float(), final, tuple("abcd")))
    got = _tensor("oracle_exit", _call("oracle_exit", oracle_exit, preds.clone(), final.clone()),
                  "a tensor of exit indices, one per token").long().flatten()
    assert got.shape == expected.shape, f"return one exit index per token: shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if not torch.equal(got, expected):
        first_agree = (preds == final).float().argmax(0)
        i = int((got != expected).nonzero()[0])
        if torch.equal(got, first_agree):
            hint = ("the first exit that agrees is not enough: every later exit must agree too (token "
                    f"{i}: predictions {preds[:, i].tolist()}, final {int(final[i])})")
        elif torch.equal(got, expected + 1) or torch.equal(got, expected - 1):
            hint = "off by one: return exit indices 0..E-1 (0 = the first exit)"
        else:
            hint = (f"token {i} has predictions {preds[:, i].tolist()} at the exits and final {int(final[i])}: "
                    f"the answer is {int(expected[i])}, you gave {int(got[i])}")
        raise AssertionError(f"{int((got != expected).sum())} of {len(expected)} tokens differ. Hint: {hint}.")
    print(f"Correct: the oracle exit of all {len(expected)} tokens (mean exit {expected.float().mean():.2f}).")
