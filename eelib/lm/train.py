"""Training the course language model: the corpus, the tokenizer, the training loop, the model card, the command line.

`train_course_model` (or ``python -m eelib.lm train``) retrains the shipped model
(`eelib.lm.model`) from the corpus:

* corpus: Tiny Shakespeare, 1,115,394 characters (public domain), read from a path or downloaded
  from ``CORPUS_URL``; its sha256 is checked either way (`eelib.lm.corpus`);
* split by characters: ``text[:len(text) * 9 // 10]`` trains (tokenizer and model),
  ``text[len(text) * 9 // 10:]`` validates — the last 10%, on which the model card reports;
* a byte-level BPE tokenizer (``tokenizers``) and a ``GPT2LMHeadModel`` trained with AdamW,
  linear warm-up and cosine decay, from a fixed seed; saved in fp16 with a model card.

``python -m eelib.lm eval`` measures a model on the last 10% of the corpus.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from eelib._util.cache import DownloadError, atomic_path  # noqa: F401 (DownloadError: what load_corpus raises)
from eelib._util.device import get_device, seed_everything
from eelib._util.eval_mode import eval_mode
from eelib._util.progress import tqdm
from eelib.errors import EelibError
from eelib.lm.corpus import (CORPUS_FILE, CORPUS_SHA256, CORPUS_URL, load_corpus, split_corpus,  # noqa: F401
                             train_tokenizer)
from eelib.lm.model_card import _model_card, _sha256_text, generate_sample  # noqa: F401 (generate_sample: its old home)
from eelib.lm.model import (COURSE_EE_MODEL, COURSE_MODEL, END_OF_TEXT, LMEval, course_model_path, evaluate_text,
                            load_lm)


@dataclass(frozen=True)
class LMTrainConfig:
    """How the course model is built and trained (the defaults made the shipped model).

    Model: GPT-2 with tied input/output embeddings; ``n_layer`` blocks of width ``n_embd``.
    Training: random windows of ``context_length + 1`` tokens from the training text, AdamW,
    linear warm-up for ``warmup_steps`` then cosine decay to ``min_lr`` at ``steps``.
    """

    n_layer: int = 8
    n_embd: int = 160
    n_head: int = 5
    vocab_size: int = 4096  # byte-level BPE: 256 bytes + merges + <|endoftext|>
    context_length: int = 256  # n_positions
    dropout: float = 0.1  # residual, embedding and attention dropout while training
    batch_size: int = 16  # windows per step
    steps: int = 2400
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only, not on biases, LayerNorms, embeddings
    grad_clip: float = 1.0
    max_minutes: float | None = None  # stop early (schedule compressed to fit) past this time
    eval_every: int = 100  # steps between validation-loss estimates in the log
    bf16: bool = True  # bfloat16 autocast: fast on GPUs and on CPUs with AMX / AVX-512 BF16
    seed: int = 0
    # training for early exit (course-ee): a loss at every exit, see `early_exit_loss`
    early_exit: bool = False  # one ExitAdapter per layer 1 .. n_layer - 1, trained jointly with the model
    exit_weights: tuple[float, ...] | None = None  # per layer 1 .. n_layer - 1; None: `default_exit_weights`
    exit_distill: float = 0.5  # each exit's loss: (1 - exit_distill) x cross-entropy + exit_distill x KL to the final
    exit_positions: float = 0.25  # share of the positions (random, each step) on which the exits are scored
    init: str | None = None  # start from this model ("course", a folder) and its exit heads, not from scratch

    def __post_init__(self) -> None:
        if self.exit_weights is not None:
            if not self.early_exit:
                raise ValueError("exit_weights needs early_exit=True")
            if len(self.exit_weights) != self.n_layer - 1 or any(not w >= 0 for w in self.exit_weights):
                raise ValueError(f"exit_weights must hold {self.n_layer - 1} non-negative weights (layers 1 .. "
                                 f"{self.n_layer - 1}), got {self.exit_weights!r}")
        if not 0 < self.exit_positions <= 1:
            raise ValueError(f"exit_positions must be in (0, 1], got {self.exit_positions!r}")
        if not 0 <= self.exit_distill <= 1:
            raise ValueError(f"exit_distill must be in [0, 1], got {self.exit_distill!r}")
        for field in ("n_layer", "n_embd", "n_head", "vocab_size", "context_length", "batch_size", "steps"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"lr must be positive and min_lr between 0 and lr, got lr={self.lr}, min_lr={self.min_lr}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive or None (no time limit), got {self.max_minutes}")
        if self.warmup_steps < 0 or self.eval_every < 1:
            raise ValueError(f"warmup_steps must be >= 0 and eval_every >= 1, got {self.warmup_steps} and "
                             f"{self.eval_every}")
        if self.vocab_size < 257:
            raise ValueError(f"vocab_size must be at least 257 (256 bytes and <|endoftext|>), got {self.vocab_size}")


@dataclass(frozen=True)
class LMTrainResult:
    """What `train_course_model` produced.

    Attributes:
        path: the saved model folder.
        validation: the saved (fp16) model on the last 10% of the corpus.
        train_losses: ``(step, training loss)`` pairs, as logged.
        val_losses: ``(step, validation loss estimate)`` pairs, as logged.
        seconds: training wall-clock time (tokenizer and model, without the final evaluation).
        n_parameters: parameters of the model (tied embeddings counted once).
        folder_bytes: size of the saved folder.
    """

    path: Path
    validation: LMEval
    train_losses: list[tuple[int, float]]
    val_losses: list[tuple[int, float]]
    seconds: float
    n_parameters: int
    folder_bytes: int


def default_exit_weights(n_layer: int, draft_layer: int | None = None) -> tuple[float, ...]:
    """The exit losses' weights of course-ee, layers ``1 .. n_layer - 1``: 0.15 each, 0.4 at half the depth
    (chapter 7's second exit) and 0.8 at a quarter (``draft_layer``: the self-speculative draft exit)."""
    draft = max(1, n_layer // 4) if draft_layer is None else draft_layer
    weights = [0.15] * (n_layer - 1)
    if n_layer // 2 >= 1:
        weights[n_layer // 2 - 1] = 0.4
    weights[draft - 1] = 0.8
    return tuple(weights)


def early_exit_loss(model, adapters, x: torch.Tensor, y: torch.Tensor, weights: Sequence[float],
                    distill: float, positions: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of training for early exit, on windows ``x`` -> next tokens ``y`` (both ``(B, T)``).

    ``CE(final) + sum_l w_l [(1 - distill) CE(exit_l) + distill KL(p_final || p_exit_l)]``: exit ``l``
    is ``lm_head(adapters[l - 1](h_l))`` (the shared ``lm_head``, one `ExitAdapter` per layer); the
    KL pulls each exit towards the final layer's distribution (detached: it teaches the exits, it
    does not bend the final layer towards them), which is what a draft must match to be accepted.

    ``positions`` < 1 scores the exits on that share of the positions only, the same random ones for
    every exit (the final layer on all): an exit head costs as much as the final one, so this makes a
    step of course-ee about as cheap as a step of the plain recipe.

    Returns:
        The total loss and the per-exit losses ``(n_layer,)`` (layers 1 .. n-1, then the final), detached.
    """
    out = model(x, output_hidden_states=True)
    final = out.logits.float().flatten(0, 1)  # (B T, vocab)
    target = y.flatten()
    loss = F.cross_entropy(final, target)
    rows = torch.arange(len(target), device=x.device)
    if positions < 1:
        rows = torch.randperm(len(target), device=x.device)[: max(1, int(len(target) * positions))]
    final_logp = F.log_softmax(final.detach()[rows], -1)
    parts = []
    for l, w in enumerate(weights, start=1):
        if w == 0:
            parts.append(torch.zeros((), device=x.device))
            continue
        h = out.hidden_states[l].flatten(0, 1)[rows]  # (rows, d)
        logits = model.lm_head(adapters[l - 1](h)).float()
        ce = F.cross_entropy(logits, target[rows])
        kl = F.kl_div(F.log_softmax(logits, -1), final_logp, log_target=True, reduction="batchmean")
        part = (1 - distill) * ce + distill * kl
        loss = loss + w * part
        parts.append(part.detach())
    parts.append(F.cross_entropy(final.detach(), target))
    return loss, torch.stack(parts)


def _lr_at(progress: float, config: LMTrainConfig) -> float:
    warm = config.warmup_steps / config.steps
    if progress < warm:
        return config.lr * progress / warm
    t = min(1.0, (progress - warm) / max(1e-9, 1 - warm))
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * t))


def _batch(tokens: torch.Tensor, config: LMTrainConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(tokens) - config.context_length - 1, (config.batch_size,), generator=generator)
    rows = torch.stack([tokens[s:s + config.context_length + 1] for s in starts.tolist()])  # (B, T+1)
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def _val_loss(model, tokens: torch.Tensor, context: int, max_windows: int = 24) -> float:
    """Mean loss over up to ``max_windows`` non-overlapping windows spread over the validation text."""
    n = (len(tokens) - 1) // context
    picks = torch.linspace(0, n - 1, min(n, max_windows)).long().tolist()
    device = next(model.parameters()).device
    x = torch.stack([tokens[i * context:(i + 1) * context] for i in picks]).to(device)
    y = torch.stack([tokens[i * context + 1:(i + 1) * context + 1] for i in picks]).to(device)
    with eval_mode(model):
        return float(model(x).logits.float().flatten(0, 1).log_softmax(-1)
                     .gather(1, y.flatten().unsqueeze(1)).neg().mean())


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def train_course_model(text: str, out: str | os.PathLike, *, config: LMTrainConfig = LMTrainConfig(),
                       device: str | torch.device | None = None, progress: bool = True,
                       log: Callable[[str], None] | None = None, sample_prompt: str = "ROMEO:") -> LMTrainResult:
    """Train the course model on ``text`` and save it, with its model card, to ``out``.

    The first 90% of the characters train the tokenizer and the model, the last 10% validate
    (`split_corpus`). The same seed on the same hardware gives the same model, unless
    ``config.max_minutes`` cuts the schedule short.
    The folder is written atomically: nothing is left at ``out`` if training fails.

    Args:
        text: the corpus (normally `load_corpus()`).
        out: the model folder to write (replaced if it exists).
        config: model size and training schedule.
        device: where to train; default ``eelib.get_device()``.
        progress: show a progress bar.
        log: called with each log line (losses, timing); the lines also go to the model card.
        sample_prompt: the prompt of the sample in the model card.

    Returns:
        An `LMTrainResult` with the measured figures.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if len(text) < 20 * config.context_length:
        raise ValueError(f"text has {len(text)} characters; training needs at least "
                         f"{20 * config.context_length} (20 context lengths)")
    log = log or (lambda line: None)
    started = time.perf_counter()
    generator = seed_everything(config.seed)
    train_text, val_text = split_corpus(text)
    init = None
    if config.init is not None:  # continue from a trained model: its tokenizer, size and weights
        init = load_lm(config.init, device="cpu")
        tokenizer = init.tokenizer
        mc = init.model.config
        if (mc.n_layer, mc.n_embd, mc.n_head, mc.n_positions, mc.vocab_size) != (
                config.n_layer, config.n_embd, config.n_head, config.context_length, config.vocab_size):
            raise ValueError(f"init={config.init!r} has {mc.n_layer} layers, width {mc.n_embd}, {mc.n_head} heads, "
                             f"context {mc.n_positions}, vocabulary {mc.vocab_size}: set the config to the same")
    else:
        tokenizer = train_tokenizer(train_text, config.vocab_size)
    tokenizer.model_max_length = config.context_length
    eot = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    train_ids = torch.tensor([eot] + tokenizer(train_text, add_special_tokens=False, verbose=False)["input_ids"])
    val_ids = torch.tensor([eot] + tokenizer(val_text, add_special_tokens=False, verbose=False)["input_ids"])
    log(f"corpus: {len(text):,} characters; train {len(train_text):,} characters = {len(train_ids):,} tokens, "
        f"validation {len(val_text):,} characters = {len(val_ids):,} tokens "
        f"({len(train_text) / len(train_ids):.2f} characters per token)")
    if len(train_ids) <= config.context_length + 1 or len(val_ids) <= config.context_length + 1:
        raise ValueError(f"text is too short for context_length={config.context_length}: the train or "
                         f"validation part has fewer tokens than one window")

    model_config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.context_length, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
        attn_pdrop=config.dropout, bos_token_id=eot, eos_token_id=eot, tie_word_embeddings=True)
    model = GPT2LMHeadModel(model_config)
    if init is not None:
        model.load_state_dict(init.model.state_dict())
        log(f"initialised from {config.init!r}")
    device = get_device(device) if not isinstance(device, torch.device) else device
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())  # tied weights appear once
    log(f"model: GPT-2, {config.n_layer} layers, width {config.n_embd}, {config.n_head} heads, vocabulary "
        f"{len(tokenizer)}, context {config.context_length}: {n_params:,} parameters")
    adapters, exit_weights = None, None
    named = list(model.named_parameters())
    if config.early_exit:
        from eelib.lm.head_training import initial_adapters

        adapters = initial_adapters(model, init).to(device).train()
        exit_weights = config.exit_weights or default_exit_weights(config.n_layer)
        named += [("exit_adapters." + n, p) for n, p in adapters.named_parameters()]
        log(f"early exit: an ExitAdapter per layer 1..{config.n_layer - 1}, loss weights {list(exit_weights)}, "
            f"distillation {config.exit_distill}")
    decay = [p for n, p in named if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    no_decay = [p for n, p in named if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    budget = None if config.max_minutes is None else config.max_minutes * 60
    train_losses: list[tuple[int, float]] = []
    val_losses: list[tuple[int, float]] = []
    train_start = time.perf_counter()
    running, seen, exit_running = 0.0, 0, None
    bar = tqdm(total=config.steps, desc="training", disable=not progress, unit="step")
    step = 0
    while step < config.steps:
        elapsed = time.perf_counter() - train_start
        frac = step / config.steps if budget is None else max(step / config.steps, elapsed / budget)
        if frac >= 1:
            log(f"step {step}: time budget of {config.max_minutes:g} min reached")
            break
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(frac, config)
        x, y = (t.to(device) for t in _batch(train_ids, config, generator))  # (B, T) each
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            if adapters is None:
                logits = model(x).logits  # (B, T, vocab)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                final_loss = loss.detach()
            else:
                loss, parts = early_exit_loss(model, adapters, x, y, exit_weights, config.exit_distill,
                                              config.exit_positions)
                final_loss = parts[-1]
                exit_running = parts if exit_running is None else exit_running + parts
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], config.grad_clip)
        optimizer.step()
        step += 1
        running += final_loss.item()  # the final layer's loss, comparable with the plain recipe
        seen += 1
        bar.update(1)
        if step % config.eval_every == 0 or step == config.steps:
            train_losses.append((step, running / seen))
            val_losses.append((step, _val_loss(model, val_ids, config.context_length)))
            exits = "" if exit_running is None else (
                ", exit losses by layer " + " ".join(f"{v:.2f}" for v in (exit_running / seen).tolist()[:-1]))
            log(f"step {step}: train loss {running / seen:.3f}, validation loss {val_losses[-1][1]:.3f} "
                f"(nats/token), lr {optimizer.param_groups[0]['lr']:.2e}, "
                f"{time.perf_counter() - train_start:.0f} s{exits}")
            bar.set_postfix(train=f"{running / seen:.3f}", val=f"{val_losses[-1][1]:.3f}")
            running, seen, exit_running = 0.0, 0, None
    bar.close()
    if seen:
        train_losses.append((step, running / seen))
        log(f"step {step}: train loss {running / seen:.3f}")
    seconds = time.perf_counter() - started
    model.eval()

    out = Path(out).expanduser()
    with atomic_path(out) as tmp:
        model.to("cpu", torch.float16).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        lm = load_lm(tmp, device=device)
        validation = evaluate_text(lm, val_text)
        log(f"validation (last 10%, fp16 weights): {validation.loss_per_token:.4f} nats/token, "
            f"{validation.bits_per_character:.4f} bits/character over {validation.n_tokens:,} tokens")
        sample = generate_sample(lm, sample_prompt, seed=config.seed)
        early_exit = None
        if adapters is not None:
            from eelib.lm.head_training import save_trained_exits

            early_exit = save_trained_exits(lm, adapters.eval(), tmp, val_text, weights=exit_weights,
                                            distill=config.exit_distill, init=config.init, log=log)
        facts = dict(config=config, n_params=n_params, seconds=seconds, steps=step,
                     train_losses=train_losses, val_losses=val_losses, validation=validation, sample=sample,
                     prompt=sample_prompt, n_train=(len(train_text), len(train_ids)),
                     n_val=(len(val_text), len(val_ids)), corpus_chars=len(text),
                     corpus_sha256=_sha256_text(text), device=device, early_exit=early_exit)
        size = 0
        for _ in range(4):  # the card states the folder's size, which includes the card
            (tmp / "README.md").write_text(_model_card(**facts, folder_bytes=size), encoding="utf-8")
            if _folder_bytes(tmp) == size:
                break
            size = _folder_bytes(tmp)
    return LMTrainResult(path=out, validation=validation, train_losses=train_losses, val_losses=val_losses,
                         seconds=seconds, n_parameters=n_params, folder_bytes=_folder_bytes(out))


def default_train_folder(name: str = COURSE_MODEL) -> Path:
    """Where ``python -m eelib.lm train`` writes by default: ``<cache root>/models/<name>`` (never the package)."""
    from eelib._util.cache import models_dir

    return models_dir() / name


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eelib.lm train|eval``: retrain the course model, or measure a model."""
    parser = argparse.ArgumentParser(prog="python -m eelib.lm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="train the course model from Tiny Shakespeare")
    train_p.add_argument("--corpus", type=Path, help="the Tiny Shakespeare text (default: download it)")
    where = train_p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=None,
                       help="model folder to write (default: <eelib cache>/models/course, or .../course-ee "
                            "with --early-exit; the installed package is not touched)")
    where.add_argument("--into-package", action="store_true",
                       help="replace the model shipped inside the package (for the course's maintainers)")
    defaults = LMTrainConfig()
    for field in ("steps", "max_minutes", "seed", "n_layer", "n_embd", "n_head", "vocab_size",
                  "context_length", "batch_size", "lr", "warmup_steps", "dropout", "eval_every"):
        kind = float if field in ("lr", "dropout", "max_minutes") else int
        train_p.add_argument("--" + field.replace("_", "-"), dest=field, type=kind,
                             default=getattr(defaults, field), help=f"default {getattr(defaults, field)}")
    train_p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    train_p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 only")
    train_p.add_argument("--early-exit", action="store_true",
                         help="train for early exit: a loss at every exit, adapters trained jointly (course-ee)")
    train_p.add_argument("--init", default=None, help="start from this model ('course', a folder) and its exit heads")
    train_p.add_argument("--exit-distill", type=float, default=defaults.exit_distill,
                         help=f"share of KL to the final layer in each exit's loss (default {defaults.exit_distill})")
    train_p.add_argument("--min-lr", dest="min_lr", type=float, default=defaults.min_lr,
                         help=f"default {defaults.min_lr}")
    train_p.add_argument("--device", default=None, help="cpu, cuda, mps (default: eelib.get_device())")
    eval_p = sub.add_parser("eval", help="loss and bits per character on the last 10%% of the corpus")
    eval_p.add_argument("--model", default=COURSE_MODEL, help="'course', a Hub id or a folder")
    eval_p.add_argument("--corpus", type=Path, help="the Tiny Shakespeare text (default: download it)")
    args = parser.parse_args(argv)
    if args.command == "train":  # the arguments are checked before the corpus loads (or downloads)
        try:
            config = LMTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LMTrainConfig)
                                      if hasattr(args, f.name)})
        except ValueError as err:
            train_p.error(str(err))
    try:
        text = load_corpus(args.corpus)
    except (OSError, ValueError, DownloadError) as err:  # DownloadError: offline (a RuntimeError)
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "train":
        if args.threads:
            torch.set_num_threads(args.threads)
        name = COURSE_EE_MODEL if config.early_exit else COURSE_MODEL
        out = (course_model_path(name) if args.into_package
               else args.out if args.out is not None else default_train_folder(name))
        result = train_course_model(text, out, config=config, device=args.device,
                                    log=lambda line: print(line, flush=True))
        print(f"saved {result.path} ({result.folder_bytes:,} bytes, {result.n_parameters:,} parameters) in "
              f"{result.seconds / 60:.1f} min: validation {result.validation.loss_per_token:.4f} nats/token, "
              f"{result.validation.bits_per_character:.4f} bits/character")
        if not args.into_package:
            print(f"load it with eelib.load_lm({str(result.path)!r}); eelib.load_lm({name!r}) still loads the "
                  f"shipped model")
    else:
        try:
            lm = load_lm(args.model)
        except (OSError, ValueError, TypeError, EelibError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        figures = evaluate_text(lm, split_corpus(text)[1])
        print(f"{args.model}: {figures.loss_per_token:.4f} nats/token, {figures.bits_per_character:.4f} "
              f"bits/character on the last 10% ({figures.n_tokens:,} tokens, {figures.n_characters:,} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
