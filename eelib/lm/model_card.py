"""The course model's card and what it quotes: a generated sample, the hardware, the corpus digest.

:func:`_model_card` writes the README of a model trained by :func:`eelib.lm.train.train_course_model`;
:func:`generate_sample` is the greedy sample it shows (also used by chapter 6).
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from eelib._util.eval_mode import eval_mode
from eelib.lm.corpus import CORPUS_URL
from eelib.lm.model import COURSE_EE_MODEL, COURSE_MODEL, LanguageModel, LMEval, encode

if TYPE_CHECKING:
    from eelib.lm.train import LMTrainConfig


def _sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@torch.no_grad()
def generate_sample(lm: LanguageModel, prompt: str, *, max_new_tokens: int = 60, seed: int = 0,
                    temperature: float = 0.8, top_k: int = 40) -> str:
    """A sampled continuation of ``prompt`` (temperature and top-k sampling, seeded), prompt included.

    In eval mode (the caller's mode restored); the caller's random number generator is left as it was."""
    ids = encode(lm, prompt).unsqueeze(0).to(lm.device)
    max_new_tokens = min(max_new_tokens, lm.context_length - ids.shape[1])  # no position past the context
    with torch.random.fork_rng(), eval_mode(lm.model):  # torch.manual_seed seeds every device: all are forked
        torch.manual_seed(seed)
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=temperature,
                                top_k=top_k, max_new_tokens=max_new_tokens,
                                pad_token_id=lm.tokenizer.eos_token_id)
    return lm.tokenizer.decode(out[0], skip_special_tokens=True)


def _hardware(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (GPU); torch {torch.__version__}"
    return (f"{cpu}, torch threads: {torch.get_num_threads()} ({os.cpu_count()} logical CPUs), no GPU; "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}")


def _model_card(*, config: LMTrainConfig, n_params: int, seconds: float, steps: int, train_losses, val_losses,
                validation: LMEval, sample: str, prompt: str, n_train, n_val, corpus_chars: int,
                corpus_sha256: str, folder_bytes: int, device: torch.device, early_exit: dict | None = None) -> str:
    import transformers

    rows = "\n".join(f"| {s} | {t:.3f} | {v:.3f} |" for (s, t), (_, v) in zip(train_losses, val_losses))
    fields = "\n".join(f"| `{f.name}` | {getattr(config, f.name)} |" for f in dataclasses.fields(config))
    sample_lines = "\n".join("    " + line for line in sample.splitlines())
    if early_exit is None:
        title = "shakespeare-gpt2: the eelib course language model"
        name, ee_section = COURSE_MODEL, ""
    else:
        title = "shakespeare-gpt2-ee: the eelib course language model trained for early exit"
        name = COURSE_EE_MODEL
        table = "\n".join(f"| {l} | {a:.1%} | {c:.1%} |" for l, (a, c) in enumerate(
            zip(early_exit["agreement_by_layer"], early_exit["course_agreement_by_layer"]), start=1))
        ee_section = f"""
## Trained for early exit
Every layer 1 .. {config.n_layer - 1} has an exit: an `ExitAdapter` (`ln(h + A h + b)`, in `exit_heads/`)
before the model's own, shared `lm_head`, trained **jointly with the model** (`eelib.lm.train.early_exit_loss`):
the loss is the final layer's cross-entropy plus, for each layer l, weight w_l times
({1 - config.exit_distill:g} x cross-entropy + {config.exit_distill:g} x KL(final layer || exit l)), the final layer's
distribution detached. Weights w_1 .. w_{config.n_layer - 1}: {", ".join(f"{w:g}" for w in early_exit["weights"])}
(the most at a quarter of the depth, the self-speculative draft exit of chapter 8), fixed for the whole run;
no layer dropout. Initialised from {early_exit["init"]!r} (and its shipped exit heads) when not None.

Agreement of each layer's exit with the model's own final layer (share of top-1 tokens equal) on the
test half of the held-out text ({early_exit["test_tokens"]:,} tokens), beside the course model with
its tuned exit heads (`eelib.course_exits`):

| layer | this model | course model + tuned heads |
|---|---|---|
{table}
"""
    return f"""# {title}

A small GPT-2 (`GPT2LMHeadModel`, `model_type` "gpt2") trained on Tiny Shakespeare, shipped inside
eelib so that the language-model chapters run offline. Load it with `eelib.lm.model.load_lm({name!r})`,
or with `transformers.GPT2LMHeadModel.from_pretrained(<this folder>)` and
`transformers.AutoTokenizer.from_pretrained(<this folder>)`.

## Data and split
- Corpus: Tiny Shakespeare (public domain), {corpus_chars:,} characters, sha256 `{corpus_sha256}`
  (of the text as UTF-8), from {CORPUS_URL}.
- Split by characters: `text[:len(text) * 9 // 10]` ({n_train[0]:,} characters, {n_train[1]:,} tokens)
  trains the tokenizer and the model; `text[len(text) * 9 // 10:]` ({n_val[0]:,} characters,
  {n_val[1]:,} tokens), the last 10%, validates. `<|endoftext|>` is put before each part.

## Model
- {config.n_layer} layers, width {config.n_embd}, {config.n_head} heads, context {config.context_length} tokens,
  vocabulary {config.vocab_size} (byte-level BPE trained with `tokenizers` on the training part;
  `<|endoftext|>` is bos, eos and unk), tied input/output embeddings: {n_params:,} parameters.
- Stored as fp16 safetensors; this folder is {folder_bytes:,} bytes.

## Training
`python -m eelib.lm train` with these settings (`eelib.lm.train.LMTrainConfig`):

| setting | value |
|---|---|
{fields}

AdamW (betas 0.9, 0.95), linear warm-up then cosine decay, random windows of the training tokens.
{steps} steps in {seconds / 60:.1f} minutes (tokenizer included) on {_hardware(device)}; transformers
{transformers.__version__}.

| step | training loss | validation loss (estimate on 24 windows) |
|---|---|---|
{rows}

Losses in nats per token.

## Validation (last 10% of the corpus, the fp16 weights of this folder)
- **{validation.loss_per_token:.4f} nats per token** over {validation.n_tokens:,} tokens
- **{validation.bits_per_character:.4f} bits per character** over {validation.n_characters:,} characters

Measured with `eelib.lm.model.evaluate_text`: `<|endoftext|>` first, then a sliding window of
{config.context_length} tokens with stride {config.context_length // 2}, each token scored once.

## Sample
Prompt `{prompt!r}`, sampled (temperature 0.8, top-k 40, seed {config.seed}):

{sample_lines}
{ee_section}"""


# --- command line ----------------------------------------------------------------------------
