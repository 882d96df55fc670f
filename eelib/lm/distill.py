"""Drafts trained on what they draft: exit heads distilled on the model's own greedy continuations.

Self-speculative decoding drafts the model's *own* greedy text, and an exit head trained on
Shakespeare (:func:`eelib.lm.head_training.train_exit_heads`) learnt to match the final layer on
Shakespeare's text, not on the model's continuations, which repeat, loop and use fewer words.
Self-distillation trains the heads on the distribution they draft in (as Medusa-2 trains its
heads on the model's own outputs): prompts are cut from the training text, the model continues
each greedily (batched, with Hugging Face ``generate``), and the adapters learn
``KL(p_final || p_exit)`` on those sequences, mixed with windows of the training text. The model
itself is frozen: its final layer (and so every exact decoder's output) does not change.

``python -m eelib.lm.distill --corpus tinyshakespeare.txt`` retrains the shipped heads of
``course-ee`` this way (about 5 minutes on 2 CPU threads) and writes ``distill.json`` beside them:
agreement on the model's own continuations of test-half prompts, layer by layer, before and after.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from eelib._util.eval_mode import eval_mode
from eelib._util.progress import tqdm
from eelib.lm.exits import HEADS_FOLDER, EarlyExitLM, heldout_text
from eelib.lm.head_training import kl_stepper
from eelib.lm.model import LanguageModel, course_model_path, encode

DISTILL_FILE = "distill.json"  # beside the retrained heads: what the distillation did


def own_continuations(lm: LanguageModel, text: str, n: int, *, prompt_tokens: int = 32, new_tokens: int = 128,
                      batch_size: int = 40, seed: int = 0) -> torch.Tensor:
    """``n`` prompts of ``prompt_tokens`` tokens from random places of ``text``, each continued greedily by the
    model for ``new_tokens`` tokens: ``(n, prompt_tokens + new_tokens)`` token ids (prompt included).

    The prompts are drawn with a local generator seeded by ``seed`` (the caller's random state is untouched);
    the continuations are the model's greedy decoding (Hugging Face ``generate``, batched: every prompt
    has the same length, so no padding is needed).
    """
    for name, value in (("n", n), ("prompt_tokens", prompt_tokens), ("new_tokens", new_tokens),
                        ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if prompt_tokens + new_tokens > lm.context_length:
        raise ValueError(f"prompt_tokens + new_tokens must fit the context window ({lm.context_length}), got "
                         f"{prompt_tokens} + {new_tokens}")
    ids = encode(lm, text)
    if len(ids) <= prompt_tokens:
        raise ValueError(f"text has {len(ids)} tokens; prompts of {prompt_tokens} tokens need more")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - prompt_tokens, (n,), generator=gen).tolist()
    prompts = torch.stack([ids[s:s + prompt_tokens] for s in starts]).to(lm.device)
    out = []
    with eval_mode(lm.model), torch.inference_mode():
        for chunk in prompts.split(batch_size):
            out.append(lm.model.generate(chunk, attention_mask=torch.ones_like(chunk), do_sample=False,
                                         max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         pad_token_id=lm.tokenizer.eos_token_id))
    return torch.cat(out).cpu()


def own_agreement(ee: EarlyExitLM, sequences: torch.Tensor, prompt_tokens: int = 32) -> tuple[float, ...]:
    """Agreement of every exit of ``ee`` with its final layer on the continuation part of ``sequences``
    ``(n, T)`` (the positions that predict a generated token): what drafting sees. One value per exit."""
    same = torch.zeros(ee.num_exits, dtype=torch.float64)
    count = 0
    with eval_mode(ee.model), torch.no_grad():
        for seq in sequences:
            logits = ee.exit_logits(seq.to(ee.lm.device))[:, prompt_tokens - 1:-1]  # (exits, new, vocab)
            preds = logits.argmax(-1)
            same += (preds == preds[-1]).double().sum(-1).cpu()
            count += preds.shape[1]
    return tuple(round(float(s / count), 6) for s in same)


@dataclass(frozen=True)
class Distillation:
    """What :func:`distill_exit_heads` did: the loss per step and the time it took."""

    steps: int
    own_share: float  # share of the training windows cut from the model's own continuations
    losses: tuple[float, ...]
    seconds: float


def distill_exit_heads(lm: LanguageModel, sequences: torch.Tensor, text: str, *, steps: int = 600,
                       batch_size: int = 8, own_share: float = 0.75, lr: float = 2e-3, seed: int = 0,
                       init: Sequence[nn.Module] | None = None, progress: bool = True
                       ) -> tuple[nn.ModuleList, Distillation]:
    """Train one exit adapter per layer on the frozen model, on its own continuations and on ``text``.

    Each step takes ``batch_size`` windows: a share ``own_share`` of whole rows of ``sequences`` (from
    :func:`own_continuations`), the rest random windows of ``text`` of the same length; the loss is the
    mean over layers and tokens of ``KL(p_final || p_exit)`` (:func:`eelib.lm.head_training.train_exit_heads`'s loss).

    Args:
        init: adapters to start from (copied, not modified), e.g. the shipped heads; default the logit lens.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 <= own_share <= 1 or math.isnan(own_share):
        raise ValueError(f"own_share must be in [0, 1], got {own_share!r}")
    if sequences.ndim != 2 or len(sequences) == 0:
        raise ValueError(f"sequences must be a non-empty (n, T) tensor of token ids, got {tuple(sequences.shape)}")
    from eelib.lm.exits import new_adapters

    T = sequences.shape[1]
    tokens = encode(lm, text)
    if len(tokens) <= T:
        raise ValueError(f"text has {len(tokens)} tokens; windows of {T} tokens need more")
    adapters = new_adapters(lm)
    if init is not None:
        adapters.load_state_dict(nn.ModuleList(init).state_dict())
    frozen = [p for p in lm.model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    n_own = round(batch_size * own_share)
    step = kl_stepper(lm, adapters, steps, lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    start = time.perf_counter()
    try:
        with eval_mode(lm.model):  # dropout off: the target is the model's eval-mode distribution
            adapters.train()
            for _ in tqdm(range(steps), desc="distil exit heads", disable=not progress):
                rows = torch.randint(0, len(sequences), (n_own,), generator=gen).tolist()
                starts = torch.randint(0, len(tokens) - T, (batch_size - n_own,), generator=gen).tolist()
                batch = torch.stack([sequences[r] for r in rows] + [tokens[s:s + T] for s in starts]).to(lm.device)
                losses.append(step(batch))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    adapters.eval()
    return adapters, Distillation(steps, own_share, tuple(losses), time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eelib.lm.distill --corpus tinyshakespeare.txt``: retrain course-ee's exit heads on its own
    continuations; replace the shipped heads only with ``--into-package`` and only if drafting agrees more."""
    import argparse

    from eelib.lm.exits import course_exits
    from eelib.lm.model import load_lm
    from eelib.lm.train import load_corpus, split_corpus

    parser = argparse.ArgumentParser(prog="python -m eelib.lm.distill", description=main.__doc__)
    parser.add_argument("--model", default="course-ee", choices=["course", "course-ee"])
    parser.add_argument("--corpus", help="tinyshakespeare.txt (sha256 checked); default: download it")
    parser.add_argument("--sequences", type=int, default=320, help="own continuations to train on")
    parser.add_argument("--eval-sequences", type=int, default=48, help="own continuations of test-half prompts")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--own-share", type=float, default=0.75)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="folder for the heads (default: beside the model "
                        "with --into-package, else ./build/distilled_heads)")
    parser.add_argument("--into-package", action="store_true", help="replace the shipped heads")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    text, _ = split_corpus(load_corpus(args.corpus))
    lm = load_lm(args.model, device="cpu")
    every = list(range(1, lm.n_layers))
    shipped = course_exits(lm, every)
    t0 = time.perf_counter()
    train_seqs = own_continuations(lm, text, args.sequences, seed=0)
    test_seqs = own_continuations(lm, heldout_text("test"), args.eval_sequences, seed=1)
    gen_seconds = time.perf_counter() - t0
    before = own_agreement(shipped, test_seqs)
    print("own-continuation agreement before:", " ".join(f"{a:.3f}" for a in before[:-1]), flush=True)
    adapters, info = distill_exit_heads(lm, train_seqs, text, steps=args.steps, own_share=args.own_share,
                                        init=shipped.adapters)
    after = own_agreement(EarlyExitLM(lm, every, adapters=adapters), test_seqs)
    print("own-continuation agreement after: ", " ".join(f"{a:.3f}" for a in after[:-1]), flush=True)
    summary = dict(model=args.model, sequences=args.sequences, eval_sequences=args.eval_sequences, prompt_tokens=32,
                   new_tokens=128, steps=info.steps, own_share=info.own_share, seconds=round(info.seconds, 1),
                   generation_seconds=round(gen_seconds, 1), threads=torch.get_num_threads(),
                   own_agreement_before=list(before[:-1]), own_agreement_after=list(after[:-1]),
                   losses=[round(x, 4) for x in info.losses[::10]],
                   note="own_agreement: share of the positions of the model's own greedy continuations (128 tokens) "
                        "of test-half prompts at which layer l's exit (1 .. n_layers - 1) predicts the final layer's "
                        "token; before: the heads shipped before, trained on the training text")
    out = args.out or (course_model_path(args.model) / HEADS_FOLDER if args.into_package
                       else Path("build") / "distilled_heads")
    better = sum(after[:3]) > sum(before[:3])  # the draft layers (1-3) agree more on what they draft
    if args.into_package and not better:
        print("not written: the distilled heads agree less with the final layer at layers 1-3")
        return 1
    EarlyExitLM(lm, every, adapters=adapters).save_pretrained(out)  # written atomically (temp file, rename)
    from eelib._util.cache import save_json
    save_json(summary, Path(out) / DISTILL_FILE)
    print(f"distilled in {info.seconds:.0f} s; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
