"""Training exit heads on a frozen model: the adapters learn the final layer's distribution (KL).

:func:`train_exit_heads` trains one :class:`~eelib.lm.exits.ExitAdapter` per layer of a frozen model to
match its final layer (``KL(p_final || p_exit)``, self-supervised); ``python -m eelib.lm.head_training
train`` retrains the course model's shipped heads. :func:`initial_adapters` and :func:`save_trained_exits`
serve the joint training of ``course-ee`` (:mod:`eelib.lm.train`); :mod:`eelib.lm.distill` trains the same
adapters on the model's own continuations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eelib._util.eval_mode import eval_mode
from eelib._util.progress import tqdm
from eelib.lm.exits import (HEADS_FOLDER, EarlyExitLM, ExitAdapter, agreement_by_layer, course_exits, heldout_text,
                            new_adapters)
from eelib.lm.model import _SHIPPED, COURSE_MODEL, LanguageModel, course_model_path, encode


@dataclass(frozen=True)
class HeadTraining:
    """What :func:`train_exit_heads` did: the mean KL per layer before and after, the loss per step."""

    steps: int
    kl_before: tuple[float, ...]  # nats per token, one per layer 1 .. n_layers - 1, on held-out windows
    kl_after: tuple[float, ...]
    losses: tuple[float, ...]  # training loss (mean KL over layers) per step
    seconds: float


def _layer_kl(lm: LanguageModel, adapters: nn.ModuleList, ids: torch.Tensor) -> torch.Tensor:
    """KL(final || exit) per layer 1 .. n-1, mean over the tokens of ``ids`` ``(B, T)``: ``(n - 1,)``."""
    model = lm.model
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        target = F.log_softmax(out.logits.float(), -1)
    kls = []
    for l in range(1, lm.n_layers):
        logp = F.log_softmax(model.lm_head(adapters[l - 1](out.hidden_states[l])).float(), -1)
        kls.append(F.kl_div(logp, target, log_target=True, reduction="none").sum(-1).mean())
    return torch.stack(kls)


def kl_stepper(lm: LanguageModel, adapters: nn.ModuleList, steps: int, lr: float):
    """One optimisation step of the adapters on a batch of token windows ``(B, T)``: the mean over layers of
    ``KL(p_final || p_exit)``, AdamW with a 20-step warm-up and a cosine decay over ``steps``. Returns the
    function ``step(batch) -> loss``, shared by :func:`train_exit_heads` and :mod:`eelib.lm.distill`."""
    opt = torch.optim.AdamW(adapters.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))

    def step(batch: torch.Tensor) -> float:
        loss = _layer_kl(lm, adapters, batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss.item()

    return step


def train_exit_heads(lm: LanguageModel, text: str, *, steps: int = 300, batch_size: int = 8,
                     context: int | None = None, lr: float = 3e-3, seed: int = 0, eval_text: str | None = None,
                     progress: bool = True) -> tuple[nn.ModuleList, HeadTraining]:
    """Train one exit adapter per layer on the frozen model to match its final distribution.

    Self-supervised: the loss is ``KL(p_final || p_exit)`` per token, averaged over the layers
    ``1 .. n_layers - 1`` and the tokens of random windows of ``text``; only the adapters learn
    (AdamW, cosine schedule), the model and its ``lm_head`` stay frozen.

    Args:
        text: training text (the course trains on the first 90% of Tiny Shakespeare, the model's
            own training text).
        steps, batch_size, context: optimisation steps, windows per step, tokens per window
            (default the model's context length).
        eval_text: text for the KL before / after (default the last windows of ``text``).

    Returns:
        The adapters (use them with ``EarlyExitLM(lm, exit_layers, adapters=...)``) and a
        :class:`HeadTraining` summary.
    """
    import time

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    context = lm.context_length if context is None else context
    if not 2 <= context <= lm.context_length:
        raise ValueError(f"context must be from 2 to {lm.context_length}, got {context}")
    tokens = encode(lm, text)
    if len(tokens) <= context:
        raise ValueError(f"text has {len(tokens)} tokens; training needs more than context={context}")
    eval_ids = encode(lm, eval_text)[: 4 * context] if eval_text else tokens[-4 * context:]
    eval_ids = eval_ids[: len(eval_ids) // context * context].view(-1, context).to(lm.device)
    trainable = [p for p in lm.model.parameters() if p.requires_grad]
    adapters = new_adapters(lm)
    losses = []
    try:
        for p in trainable:  # frozen while the heads train, as it was afterwards
            p.requires_grad_(False)
        with eval_mode(lm.model):  # the frozen model as the heads will see it: no dropout; the caller's mode restored
            with torch.no_grad():
                before = _layer_kl(lm, adapters, eval_ids).tolist()
            step = kl_stepper(lm, adapters, steps, lr)
            gen = torch.Generator().manual_seed(seed)
            start = time.perf_counter()
            bar = tqdm(range(steps), desc="exit heads", disable=not progress)
            for _ in bar:
                starts = torch.randint(0, len(tokens) - context, (batch_size,), generator=gen)
                batch = torch.stack([tokens[s:s + context] for s in starts.tolist()]).to(lm.device)
                losses.append(step(batch))
                bar.set_postfix(kl=f"{losses[-1]:.3f}")
            with torch.no_grad():
                after = _layer_kl(lm, adapters, eval_ids).tolist()
    finally:
        for p in trainable:
            p.requires_grad_(True)
    adapters.eval()
    return adapters, HeadTraining(steps, tuple(before), tuple(after), tuple(losses), time.perf_counter() - start)


def initial_adapters(model: nn.Module, init: LanguageModel | None = None) -> nn.ModuleList:
    """Adapters to train jointly with ``model`` (course-ee): those shipped with ``init`` when it is a course
    model with trained heads (a warm start), else untrained ones (the logit lens)."""
    ln_f = model.transformer.ln_f
    adapters = nn.ModuleList(ExitAdapter(ln_f) for _ in range(model.config.n_layer - 1))
    if init is not None and init.name in _SHIPPED and (course_model_path(init.name) / HEADS_FOLDER).is_dir():
        adapters.load_state_dict(EarlyExitLM.from_pretrained(init, [1]).adapters.state_dict())
    return adapters.to(ln_f.weight.device, ln_f.weight.dtype)


def save_trained_exits(lm: LanguageModel, adapters: nn.ModuleList, folder: Path, val_text: str, *,
                       weights: Sequence[float], distill: float, init: str | None, log=None) -> dict:
    """Save the jointly trained adapters of a model trained for early exit in ``folder/exit_heads`` with a
    ``training.json`` (the recipe and each layer's agreement with its final layer on the test half of
    ``val_text``, beside the course model with its tuned heads). Returns that summary."""
    import json

    from eelib.lm.model import load_lm

    every = list(range(1, lm.n_layers))
    ee = EarlyExitLM(lm, every, adapters=adapters)
    ee.save_pretrained(folder / HEADS_FOLDER)
    cut = val_text.find("\n\n", len(val_text) // 2)  # the test half, as heldout_text("test") splits it
    test = val_text[cut + 2:] if cut >= 0 else val_text[len(val_text) // 2:]
    agreement = agreement_by_layer(ee, test)[:-1]
    course = load_lm(COURSE_MODEL, device=lm.device)
    course_agreement = agreement_by_layer(course_exits(course, list(range(1, course.n_layers))), test)[:-1]
    summary = dict(weights=list(weights), distill=distill, init=init, agreement_by_layer=list(agreement),
                   course_agreement_by_layer=list(course_agreement), test_tokens=len(encode(lm, test)),
                   note="agreement: share of the tokens of the test half of the held-out text at which layer l's "
                        "exit (1 .. n_layers - 1) predicts the same top-1 token as the model's final layer")
    (folder / HEADS_FOLDER / "training.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if log is not None:
        log("agreement with the final layer by layer (test half): " + " ".join(f"{a:.3f}" for a in agreement)
            + "; course model with tuned heads: " + " ".join(f"{a:.3f}" for a in course_agreement))
    return summary


def shipped_heads_training() -> dict:
    """How the shipped exit heads were trained: steps, seconds, and the KL (nats per token) per layer
    1 .. n_layers - 1 before (= logit lens) and after training, on the calibration half of the held-out text."""
    import json

    return json.loads((course_model_path() / HEADS_FOLDER / "training.json").read_text(encoding="utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eelib.lm.exits train``: retrain the course model's exit heads (on its training text)."""
    import argparse
    import json

    from eelib.lm.model import load_lm
    from eelib.lm.corpus import load_corpus, split_corpus

    parser = argparse.ArgumentParser(prog="python -m eelib.lm.exits", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train exit heads for every layer of the course model")
    train.add_argument("--corpus", help="tinyshakespeare.txt (sha256 checked); default: download it")
    train.add_argument("--steps", type=int, default=400)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--out", default=str(course_model_path() / HEADS_FOLDER), help="folder for the heads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_lm(COURSE_MODEL)
    text, _ = split_corpus(load_corpus(args.corpus))
    adapters, info = train_exit_heads(lm, text, steps=args.steps, batch_size=args.batch_size,
                                      eval_text=heldout_text("calibration"))
    EarlyExitLM(lm, list(range(1, lm.n_layers)), adapters=adapters).save_pretrained(args.out)
    summary = dict(steps=info.steps, kl_before=info.kl_before, kl_after=info.kl_after, seconds=info.seconds,
                   losses=info.losses[::10], batch_size=args.batch_size, context=lm.context_length,
                   note="KL(final || exit) in nats per token on the calibration half of the held-out text; "
                        "losses: every 10th training step")
    (Path(args.out) / "training.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"trained in {info.seconds:.0f} s; KL per layer before {[round(k, 3) for k in info.kl_before]}, "
          f"after {[round(k, 3) for k in info.kl_after]}; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
