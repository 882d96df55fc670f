"""The course language model: GPT-2 through Hugging Face, and a small one shipped with eelib.

`load_lm(name)` loads any GPT-2-family checkpoint (``GPT2LMHeadModel`` and its tokenizer) with
the same code: ``"course"`` — a small 8-layer GPT-2 trained on Tiny Shakespeare and shipped
inside the package, so it works offline —, a Hugging Face Hub id (``gpt2``, ``distilgpt2``,
``gpt2-medium``, ...; from the Hub or the local Hugging Face cache), or any folder written by
``save_pretrained``. Weights are read as safetensors, never with ``trust_remote_code``.

`evaluate_text` measures a model on a text: loss per token and bits per character, with a
sliding window for texts longer than the context. Retraining the shipped model from its corpus
is `eelib.lm.train` (``python -m eelib.lm train``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from eelib._util.cache import _check_host_resolves, folder_ready
from eelib._util.device import resolve_device
from eelib._util.eval_mode import eval_mode
from eelib.errors import DownloadError, ModelUnavailableError

if TYPE_CHECKING:  # transformers is imported when a model is loaded, not with eelib
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase

COURSE_MODEL = "course"
COURSE_EE_MODEL = "course-ee"  # the course model trained for early exit (chapter 8)
END_OF_TEXT = "<|endoftext|>"  # GPT-2's only special token: begins and ends a text
_COURSE_FOLDER = Path(__file__).resolve().parents[1] / "models" / "shakespeare-gpt2"
_COURSE_EE_FOLDER = Path(__file__).resolve().parents[1] / "models" / "shakespeare-gpt2-ee"
_SHIPPED = {COURSE_MODEL: _COURSE_FOLDER, COURSE_EE_MODEL: _COURSE_EE_FOLDER}


@dataclass(frozen=True)
class LanguageModel:
    """A loaded GPT-2-family model and its tokenizer.

    Attributes:
        model: the ``GPT2LMHeadModel``, in eval mode.
        tokenizer: its tokenizer (byte-level BPE).
        name: the name it was loaded by (``"course"``, a Hub id, or a folder).
        n_layers: number of transformer blocks.
        context_length: the most tokens the model sees at once (``n_positions``).
    """

    model: GPT2LMHeadModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    n_layers: int
    context_length: int

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return next(self.model.parameters()).device


@dataclass(frozen=True)
class LMEval:
    """How well a model predicts a text.

    Attributes:
        loss_per_token: mean negative log-likelihood per token, in nats.
        bits_per_character: total negative log-likelihood in bits divided by the number of
            characters — comparable across tokenizers.
        n_tokens: tokens scored.
        n_characters: characters in the text.
    """

    loss_per_token: float
    bits_per_character: float
    n_tokens: int
    n_characters: int


def course_model_path(name: str = COURSE_MODEL) -> Path:
    """The folder of a course model shipped inside the package: ``"course"`` or ``"course-ee"``."""
    if name not in _SHIPPED:
        raise ValueError(f"name must be one of {', '.join(map(repr, _SHIPPED))} (the shipped course models), "
                         f"got {name!r}")
    return _SHIPPED[name]


def _unavailable(name: str, err: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"cannot load the language model {name!r}: it is not a local folder with a config.json, and "
        f"the Hugging Face Hub could not provide it (this machine is offline, or no such model "
        f"exists there; {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
        f"Offline, use the course model shipped with eelib: load_lm({COURSE_MODEL!r}). For a Hub "
        f"model such as 'gpt2', download it once while online, e.g. `hf download gpt2` (older "
        f"huggingface_hub: `huggingface-cli download gpt2`; the Hugging Face cache then serves it offline), or load it online and call "
        f"model.save_pretrained(folder) and tokenizer.save_pretrained(folder), then load_lm(folder)."
    )


def _in_hf_cache(source: str) -> bool:
    """True when ``source`` is a folder, or a Hub id whose config the local Hugging Face cache has."""
    if Path(source).is_dir():
        return False  # a folder: from_pretrained reads it, no Hub involved
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError):
        return False
    return True


SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")  # one file, or the index of shards


def _weights_in_hf_cache(repo_id: str) -> bool:
    """True when the local Hugging Face cache holds ``repo_id``'s safetensors weights (or their index)."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in SAFETENSORS_FILES)


def _check_hub_reachable(name: str, timeout: float = 5.0) -> None:
    """Raise `ModelUnavailableError` at once when the Hub is off (``HF_HUB_OFFLINE``) or its host
    does not resolve; otherwise the Hub client retries for half a minute before failing."""
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        raise _unavailable(name, OSError("HF_HUB_OFFLINE is set and the Hugging Face cache does not have it"))
    try:
        _check_host_resolves(hub.ENDPOINT, timeout)
    except DownloadError as err:
        raise _unavailable(name, err) from err


def load_lm(name: str | os.PathLike = COURSE_MODEL, *, device: str | torch.device | None = None,
            dtype: torch.dtype | None = torch.float32) -> LanguageModel:
    """Load a GPT-2-family language model and its tokenizer.

    Args:
        name: ``"course"`` (the model shipped with eelib, offline), a Hugging Face Hub id
            (``"gpt2"``, ``"distilgpt2"``, ``"gpt2-medium"``, ...: downloaded, or taken from the
            local Hugging Face cache), or a folder written by ``save_pretrained``.
        device: where to put the model; default ``eelib.get_device()``.
        dtype: the parameters' dtype. Default float32: the course model is stored in float16 to
            keep the package small, and is converted, because CPUs compute float32 faster and
            more accurately. None keeps the stored dtype.

    Returns:
        A `LanguageModel` in eval mode.

    Raises:
        ModelUnavailableError: (an ``OSError``) the name is not a folder and the Hub cannot
            provide it — offline, or unknown; the message says how to use the course model or
            pre-download the checkpoint.
        ValueError: the checkpoint is not a GPT-2 model (``model_type`` other than ``"gpt2"``).
    """
    from transformers import AutoConfig, AutoTokenizer, GPT2LMHeadModel

    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name):
        raise (ValueError if isinstance(name, str) else TypeError)(f"name must be {COURSE_MODEL!r}, {COURSE_EE_MODEL!r}, a Hugging Face Hub id such as 'gpt2', "
                        f"or a folder written by save_pretrained; got {type(name).__name__} {name!r}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype (torch.float32, torch.bfloat16, torch.float16) "
                        f"or None (the stored dtype), got {type(dtype).__name__} {dtype!r}")
    target = resolve_device(device)  # a bad device fails before anything loads
    label = str(name)
    if label in _SHIPPED:
        source = str(course_model_path(label))
        if not (course_model_path(label) / "config.json").is_file():
            how = ("`python -m eelib.lm train --into-package`" if label == COURSE_MODEL else
                   "`python -m eelib.lm train --early-exit --init course --into-package`")
            raise ModelUnavailableError(f"the course model {label!r} is missing from {source!r}; reinstall eelib "
                                        f"(`pip install -e .` in the course folder), or retrain it with {how}")
    elif folder_ready(Path(name).expanduser()):  # a folder (waits if another process is replacing it)
        source = str(Path(name).expanduser())
        if not (Path(source) / "config.json").is_file():
            raise ValueError(f"name={label!r} is a folder without config.json; give a folder written by "
                             f"save_pretrained, a Hub id such as 'gpt2', or {COURSE_MODEL!r}")
    else:
        source = label
    cached = _in_hf_cache(source)
    if cached and not _weights_in_hf_cache(source):  # the config is cached, the weights are not
        try:
            _check_hub_reachable(label)
        except ModelUnavailableError as err:
            raise ModelUnavailableError(
                f"the Hugging Face cache has {label!r}'s config.json but not its weights "
                f"({' or '.join(SAFETENSORS_FILES)}), and the Hub cannot be reached now to download them "
                f"(offline, or HF_HUB_OFFLINE is set); "
                f"download them once while online (eelib.load_lm({label!r})), or use {COURSE_MODEL!r}") from err
        cached = False  # online: let from_pretrained download the missing weights
    if not cached and not Path(source).is_dir():
        _check_hub_reachable(label)  # fail in seconds, not after the Hub client's retries
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=cached)
    except (OSError, ValueError) as err:  # offline, unknown id (OSError), malformed id (ValueError)
        raise _unavailable(label, err) from err
    if config.model_type != "gpt2":
        raise ValueError(f"name={label!r} is a {config.model_type!r} model; load_lm loads GPT-2-family "
                         f"models only (model_type 'gpt2': gpt2, distilgpt2, gpt2-medium, ...)")
    if Path(source).is_dir() and not any((Path(source) / f).is_file() for f in SAFETENSORS_FILES):
        found = sorted(p.name for p in Path(source).iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise ValueError(f"name={label!r} is a folder with no safetensors weights ({' or '.join(SAFETENSORS_FILES)})"
                         + (f"; it has {', '.join(found)}, which eelib does not load: pickled weights can run "
                            f"code. If you trust them, convert once with transformers: "
                            f"GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder)" if found else ""))
    try:
        model = GPT2LMHeadModel.from_pretrained(source, use_safetensors=True, trust_remote_code=False,
                                                local_files_only=cached)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=cached)
    except OSError as err:
        raise _unavailable(label, err) from err
    model.to(device=target)
    if dtype is not None:
        model.to(dtype=dtype)
    model.eval()
    return LanguageModel(model=model, tokenizer=tokenizer, name=label, n_layers=config.n_layer,
                         context_length=config.n_positions)


def encode(lm: LanguageModel, text: str) -> torch.Tensor:
    """The token ids of ``text`` (no special tokens added), as a 1-D LongTensor on the CPU.

    Raises:
        ValueError: ``text`` is empty.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text:
        raise ValueError("text is empty: give at least one character to encode or score")
    return torch.tensor(lm.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)


@torch.no_grad()
def token_losses(lm: LanguageModel, text: str, *, stride: int | None = None) -> torch.Tensor:
    """Negative log-likelihood (nats) of each token of ``text``, given the tokens before it.

    The text is preceded by ``<|endoftext|>`` (GPT-2's beginning of text), so that its first
    token is scored too. A text longer than the context window is scored with a **sliding
    window**: the first window scores its ``context_length - 1`` tokens, then each next window
    moves ``stride`` tokens on and scores only the ``stride`` new tokens at its end. So every
    token is scored exactly once, with at least ``context_length - stride`` tokens of left
    context (all of them, near the start).

    Args:
        lm: the model.
        text: a non-empty text.
        stride: how far each window moves on, 1 to ``context_length - 1``; default half the
            context.
            Smaller is more accurate (more context per token) and slower.

    Returns:
        A float32 CPU tensor with one loss per token of ``encode(lm, text)``.

    Raises:
        ValueError: empty text, or a stride outside 1..context_length.
    """
    ids = encode(lm, text)
    window = lm.context_length
    stride = window // 2 if stride is None else stride
    if not isinstance(stride, int) or isinstance(stride, bool) or not 1 <= stride < window:
        raise ValueError(f"stride must be an integer from 1 to the context length minus one ({window - 1}), "
                         f"got {stride!r}")
    bos = lm.tokenizer.bos_token_id if lm.tokenizer.bos_token_id is not None else lm.tokenizer.eos_token_id
    if bos is None:
        raise ValueError(f"the tokenizer of {lm.name!r} has neither a bos nor an eos token to start the text with")
    full = torch.cat([torch.tensor([bos]), ids])  # position 0 is context only
    losses = torch.empty(len(ids))
    pos = 1  # next position of `full` to score; token i of ids sits at position i + 1
    with eval_mode(lm.model):  # no dropout; the caller's mode is restored
        while pos < len(full):
            end = min(window if pos == 1 else pos + stride, len(full))  # score positions pos .. end - 1
            start = max(0, end - window)  # with as much left context as fits
            chunk = full[start:end].to(lm.device).unsqueeze(0)  # (1, T)
            logits = lm.model(chunk).logits[0, :-1].float()  # (T - 1, vocab): predicts positions start + 1 ..
            nll = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="none").cpu()
            losses[pos - 1:end - 1] = nll[pos - start - 1:]
            pos = end
    return losses


def evaluate_text(lm: LanguageModel, text: str, *, stride: int | None = None) -> LMEval:
    """Loss per token and bits per character of ``lm`` on ``text`` (see `token_losses`).

    Bits per character = total negative log-likelihood in nats / ln 2 / ``len(text)``.
    """
    losses = token_losses(lm, text, stride=stride)
    total = float(losses.double().sum())
    return LMEval(loss_per_token=total / len(losses), bits_per_character=total / math.log(2) / len(text),
                  n_tokens=len(losses), n_characters=len(text))
