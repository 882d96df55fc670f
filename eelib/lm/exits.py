"""Early exits in GPT-2: an exit after any layer, the logit lens and trained exit heads, per token.

A GPT-2 model is a stack of ``n_layers`` transformer blocks on a residual stream; after the last
block comes the final layer norm ``ln_f`` and the language-model head ``lm_head`` (tied to the
token embedding). An **exit** after layer ``l`` turns the residual stream there into
next-token logits:

* the **logit lens** (nostalgebraist, 2020) reuses the model's own ``ln_f`` and ``lm_head`` —
  no training; exit ``l`` gives ``lm_head(ln_f(h_l))``;
* a **trained exit head** puts a small adapter before them, ``lm_head(ln(h_l + A h_l + b))``
  (the "tuned lens", Belrose et al. 2023): a d x d linear map ``A`` initialised at zero and a
  layer norm initialised from ``ln_f``. It is trained self-supervised on the frozen model to
  match the final layer's next-token distribution (KL divergence, :func:`train_exit_heads`).

Careful with Hugging Face: ``output_hidden_states=True`` returns ``n_layers + 1`` states, and
the **last one already has ln_f applied**, so the final exit is ``lm_head(h_n)``; it equals the
model's own logits exactly (tested). The others are the raw residual stream.

The exit decisions reuse the image chapters' machinery (:mod:`eelib.policies`): a token's
"label" is the full model's top-1 token, so an exit's "accuracy" is its **agreement** with the
full model, ``calibrate(..., max_accuracy_drop=0.05)`` finds thresholds for 95% agreement, and
the patience measure with threshold 2 is "agreement between consecutive exits".

Costs count what the exit-generation loop (:mod:`eelib.lm.generate`) really computes, with
``FlopCounterMode``: the layers run, every exit head evaluated on the way (a head is a
``d x vocab`` product: **twice a layer of the course model**, 5 layers of GPT-2 small), and the
keys and values that the skipped layers still need (see :func:`token_exit_costs`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from eelib._util.eval_mode import eval_mode

from eelib.outputs import ExitOutputs
from eelib.lm.model import _SHIPPED, COURSE_MODEL, LanguageModel, course_model_path, encode

HEADS_FOLDER = "exit_heads"  # beside the course model: eelib/models/shakespeare-gpt2/exit_heads/
HELDOUT_FILE = "heldout.txt"  # the last 10% of Tiny Shakespeare, which the course model never trained on


def heldout_text(part: str = "all") -> str:
    """The held-out text shipped with the course model: the last 10% of Tiny Shakespeare.

    The model never saw it (it trained on the first 90%). The chapters split it in two halves at
    the first blank line (a new speech) after the middle: ``"calibration"`` (the first half:
    thresholds are chosen on it) and ``"test"`` (the second half: prompts and measurements).

    Args:
        part: ``"all"``, ``"calibration"`` or ``"test"``.
    """
    text = (course_model_path() / HELDOUT_FILE).read_text(encoding="utf-8")
    half = text.index("\n\n", len(text) // 2) + 2  # at the first speech that starts after the middle
    parts = {"all": text, "calibration": text[:half], "test": text[half:]}
    if part not in parts:
        raise ValueError(f"part must be one of {', '.join(parts)}, got {part!r}")
    return parts[part]


class ExitAdapter(nn.Module):
    """The trainable part of an exit head: ``ln(h + A h + b)``, before the model's shared ``lm_head``.

    ``A`` and ``b`` start at zero and ``ln`` as a copy of the model's ``ln_f``, so an untrained
    adapter is exactly the logit lens.
    """

    def __init__(self, ln_f: nn.LayerNorm):
        super().__init__()
        d = ln_f.normalized_shape[0]
        self.proj = nn.Linear(d, d)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.ln = nn.LayerNorm(d, eps=ln_f.eps)
        self.ln.load_state_dict(ln_f.state_dict())

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d)
        return self.ln(h + self.proj(h))


class EarlyExitLM(nn.Module):
    """A GPT-2 language model with exits after chosen layers; the model itself is unchanged.

    Args:
        lm: the language model (from :func:`eelib.load_lm`); it is not modified.
        exit_layers: the layers (1 .. n_layers - 1) after which an early exit sits, e.g.
            ``(2, 4, 6)``. The final exit, after the last layer, is always there: it is the
            model's own head.
        adapters: ``None`` for logit-lens exits, or one :class:`ExitAdapter` per layer
            ``1 .. n_layers - 1`` (as trained by :func:`train_exit_heads`; only those of
            ``exit_layers`` are used).

    Exit ``k`` (0-based) sits after layer ``layers[k]``; ``layers[-1] == n_layers``.
    """

    def __init__(self, lm: LanguageModel, exit_layers: Sequence[int], *,
                 adapters: Sequence[ExitAdapter] | nn.ModuleList | None = None):
        super().__init__()
        if not isinstance(lm, LanguageModel):
            raise TypeError(f"lm must be a LanguageModel (eelib.load_lm(...)), got {type(lm).__name__}")
        n = lm.n_layers
        if isinstance(exit_layers, (str, bytes)) or not hasattr(exit_layers, "__iter__"):
            raise TypeError(f"exit_layers must be a sequence of layers from 1 to {n - 1}, e.g. (2,) or (2, 4), "
                            f"got {type(exit_layers).__name__} {exit_layers!r}")
        layers = list(exit_layers)
        bad = [l for l in layers if isinstance(l, bool) or not isinstance(l, int) or not 1 <= l < n]
        if bad or not layers:
            raise ValueError(f"exit_layers must be a non-empty list of layers from 1 to {n - 1} (the model has "
                             f"{n} layers; the final exit after layer {n} is always there), got {list(exit_layers)}")
        if layers != sorted(set(layers)):
            raise ValueError(f"exit_layers must be increasing without repeats, got {layers}")
        if adapters is not None and len(adapters) != n - 1:
            raise ValueError(f"adapters must hold one ExitAdapter per layer 1..{n - 1} ({n - 1}), got {len(adapters)}")
        self.lm = lm
        self.model = lm.model
        self.exit_layers = tuple(layers)
        self.adapters = None if adapters is None else nn.ModuleList(adapters)

    @property
    def layers(self) -> tuple[int, ...]:
        """The layer of every exit, the final one included."""
        return self.exit_layers + (self.lm.n_layers,)

    @property
    def num_exits(self) -> int:
        return len(self.layers)

    @property
    def exit_names(self) -> tuple[str, ...]:
        return tuple(f"layer {l}" for l in self.exit_layers) + (f"final (layer {self.lm.n_layers})",)

    @property
    def kind(self) -> str:
        """``"logit lens"`` or ``"trained heads"``."""
        return "logit lens" if self.adapters is None else "trained heads"

    def check_exit(self, k: int) -> int:
        """``k`` if exit ``k`` exists, else a ValueError that lists the exits."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_exits:
            raise ValueError(f"exit {k!r} does not exist: there are {self.num_exits} exits (0..{self.num_exits - 1}), "
                             f"after layers {list(self.layers)}")
        return k

    def head(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Exit ``k``'s logits from the **raw** residual stream after its layer (before ``ln_f``)."""
        self.check_exit(k)
        tf = self.model.transformer
        if k == self.num_exits - 1 or self.adapters is None:
            return self.model.lm_head(tf.ln_f(h))
        return self.model.lm_head(self.adapters[self.layers[k] - 1](h))

    @torch.no_grad()
    def exit_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits of every exit at every position: ``(T,)`` or ``(1, T)`` ids -> ``(num_exits, T, vocab)``.

        One forward pass of the model with ``output_hidden_states=True``, in eval mode (no dropout;
        the caller's mode is restored afterwards). The last hidden state already has ``ln_f``
        applied, so the final exit is ``lm_head`` of it: exactly the model's logits.
        """
        ids = _as_batch(input_ids, self.lm)
        with eval_mode(self):
            out = self.model(ids.to(self.lm.device), output_hidden_states=True)
            hs = out.hidden_states  # n_layers + 1: the embeddings, then after each block
            logits = [self.head(k, hs[l]) for k, l in enumerate(self.exit_layers)]
            logits.append(self.model.lm_head(hs[-1]))  # already normalised by ln_f
        return torch.stack(logits)[:, 0]

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the adapters (safetensors) and their layer count to ``folder`` (read by :meth:`from_pretrained`)."""
        from safetensors.torch import save_file

        from eelib._util.cache import atomic_path

        if self.adapters is None:
            raise ValueError("this EarlyExitLM uses the logit lens: there are no trained heads to save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in self.adapters.state_dict().items()}
        with atomic_path(folder / "adapters.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"n_layers": str(self.lm.n_layers),
                                                   "hidden_size": str(self.model.config.n_embd)})
        return folder

    def save_heads(self, folder: str | Path) -> Path:
        """Deprecated name of :meth:`save_pretrained`, kept for older code."""
        warnings.warn("EarlyExitLM.save_heads is now save_pretrained", DeprecationWarning, stacklevel=2)
        return self.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, lm: LanguageModel, exit_layers: Sequence[int],
                        folder: str | Path | None = None) -> "EarlyExitLM":
        """An :class:`EarlyExitLM` with trained exit heads read from ``folder`` (Hugging Face's verb).

        Args:
            lm: the language model the heads were trained for.
            exit_layers: where the exits go (the heads of those layers are used).
            folder: written by :meth:`save_pretrained`; default: the heads shipped beside the
                course model (``lm`` must then be a course model).
        """
        from safetensors.torch import load_file

        if folder is None:
            if lm.name not in _SHIPPED:
                raise ValueError(f"shipped exit heads belong to the course models ({', '.join(map(repr, _SHIPPED))}), "
                                 f"not {lm.name!r}: train heads for it with train_exit_heads, or give folder=")
            folder = course_model_path(lm.name) / HEADS_FOLDER
        path = Path(folder) / "adapters.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no trained exit heads in {str(folder)!r} (adapters.safetensors is missing)")
        adapters = new_adapters(lm)
        state = load_file(str(path), device="cpu")
        try:
            adapters.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as err:
            raise ValueError(f"the exit heads in {str(folder)!r} do not fit {lm.name!r} ({lm.n_layers} layers, width "
                             f"{lm.model.config.n_embd}): {err}") from None
        return cls(lm, exit_layers, adapters=adapters)


def check_exits(ee, where: str) -> None:
    """A TypeError unless ``ee`` is an `EarlyExitLM` (a `LanguageModel` gets told how to make one)."""
    if not isinstance(ee, EarlyExitLM):
        hint = ("; that is a language model without exits: give its exits, course_exits(lm) or "
                "EarlyExitLM(lm, exit_layers)") if isinstance(ee, LanguageModel) else ""
        raise TypeError(f"{where} takes an EarlyExitLM first, got {type(ee).__name__}{hint}")


def _check_max_tokens(max_tokens: int | None, *, optional: bool = False) -> None:
    if optional and max_tokens is None:
        return
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer{' or None (every token)' if optional else ''}, "
                         f"got {max_tokens!r}")


def _as_batch(input_ids: torch.Tensor, lm: LanguageModel) -> torch.Tensor:
    ids = torch.as_tensor(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (T,) or (1, T) tensor of token ids, got {tuple(ids.shape)}")
    if ids.shape[1] > lm.context_length:
        raise ValueError(f"input_ids has {ids.shape[1]} tokens, more than the context window of "
                         f"{lm.context_length}; score long texts in windows (see token_exit_outputs)")
    return ids


def new_adapters(lm: LanguageModel) -> nn.ModuleList:
    """Untrained adapters (= the logit lens) for every layer 1 .. n_layers - 1."""
    ln_f = lm.model.transformer.ln_f
    return nn.ModuleList(ExitAdapter(ln_f) for _ in range(lm.n_layers - 1)).to(lm.device, ln_f.weight.dtype)


def load_exit_heads(lm: LanguageModel, exit_layers: Sequence[int], folder: str | Path | None = None) -> EarlyExitLM:
    """Deprecated name of :meth:`EarlyExitLM.from_pretrained` (Hugging Face's verb), kept for older code."""
    warnings.warn("load_exit_heads(lm, layers, folder) is now EarlyExitLM.from_pretrained(lm, layers, folder)",
                  DeprecationWarning, stacklevel=2)
    return EarlyExitLM.from_pretrained(lm, exit_layers, folder)


def course_exits(lm: LanguageModel | None = None, exit_layers: Sequence[int] = (2, 4), *,
                 trained: bool = True) -> EarlyExitLM:
    """A course model (default ``"course"``; ``load_lm("course-ee")`` for the one trained for early exit)
    with exits after ``exit_layers`` (default 2 and 4, as in chapter 7 and the benchmark): its shipped
    trained heads, or the logit lens."""
    from eelib.lm.model import load_lm

    lm = load_lm(COURSE_MODEL) if lm is None else lm
    return EarlyExitLM.from_pretrained(lm, exit_layers) if trained else EarlyExitLM(lm, exit_layers)


# --- per-token analysis ----------------------------------------------------------------------

@dataclass(frozen=True)
class TokenExits:
    """Every exit's logits on a text, one row per predicted position.

    Attributes:
        outputs: an :class:`~eelib.outputs.ExitOutputs` whose "labels" are the **full model's
            top-1 tokens**: an exit's accuracy is its agreement with the full model, and every
            function of :mod:`eelib.policies` applies (policies, calibration, oracle, trade-off).
        input_ids: ``(T,)`` the tokens of the text; row ``i`` predicts the token after ``input_ids[i]``.
        targets: ``(T,)`` the true next token of each row (the text's own), for perplexity.
    """

    outputs: ExitOutputs
    input_ids: torch.Tensor
    targets: torch.Tensor


@torch.no_grad()
def token_exit_outputs(ee: EarlyExitLM, text: str, *, max_tokens: int = 2048,
                       dtype: torch.dtype = torch.float32) -> TokenExits:
    """Run ``ee`` over ``text`` (in non-overlapping windows of the context length) and keep every exit's logits.

    Args:
        text: the text; its first ``max_tokens`` tokens are used.
        max_tokens: the most tokens to keep. The logits take ``num_exits x tokens x vocab`` values:
            for the course model (vocabulary 4,096) and 8 exits, 2,048 tokens take 268 MB in
            float32; for GPT-2 (50,257) and 12 exits, 4.9 GB — use fewer tokens or exits.
        dtype: the stored logits' dtype. float16 halves the memory, but then the final exit's
            stored logits may rank a few near-ties differently from the labels (which are always
            the full-precision top-1).
    """
    check_exits(ee, "token_exit_outputs")
    _check_max_tokens(max_tokens)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype for the stored logits (torch.float32, "
                        f"torch.float16, torch.bfloat16), got {dtype!r}")
    ids = encode(ee.lm, text)[: max_tokens + 1]
    if len(ids) < 2:
        raise ValueError("text must have at least 2 tokens: one to read and one to predict")
    window = ee.lm.context_length
    chunks, labels = [], []
    for start in range(0, len(ids) - 1, window):
        chunk = ee.exit_logits(ids[start:start + window])
        labels.append(chunk[-1].argmax(-1).cpu())  # the full model's top-1, before any rounding
        chunks.append(chunk.to(dtype).cpu())
    logits = torch.cat(chunks, 1)[:, : len(ids) - 1]
    inputs, targets = ids[: len(ids) - 1], ids[1:]
    outputs = ExitOutputs(logits, torch.cat(labels)[: len(ids) - 1], ee.exit_names)
    return TokenExits(outputs, inputs, targets)


def oracle_token_exits(outputs: ExitOutputs) -> torch.Tensor:
    """Each token's oracle exit (an exit index, not a layer: ``ee.layers[k]`` is its layer): the earliest exit from which **every later exit** agrees with the final one.

    The final exit always agrees with itself, so every token has one: agreement is measured
    against the final exit's own prediction, not against ``outputs.labels`` (which may differ from
    it, e.g. labels from another pass of the model that a near-tie in float16 decided otherwise).
    Returns exit indices ``(N,)``, each in ``0 .. num_exits - 1``.
    """
    preds = outputs.predictions  # (E, N)
    correct = preds == preds[-1]  # (E, N): agrees with the final exit
    stays = correct.flip(0).to(torch.int64).cumprod(0).flip(0)  # 1 where this exit and all later agree
    return outputs.num_exits - stays.sum(0)


def oracle_layers(outputs: ExitOutputs) -> torch.Tensor:
    """Deprecated name of :func:`oracle_token_exits` (which returns exit indices, not layers), kept for older code."""
    warnings.warn("oracle_layers is now oracle_token_exits (it returns exit indices, not layers)",
                  DeprecationWarning, stacklevel=2)
    return oracle_token_exits(outputs)


def perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """exp(mean cross-entropy) of ``(N, vocab)`` logits against ``(N,)`` targets (rows with target -1 skipped)."""
    keep = targets >= 0
    return math.exp(F.cross_entropy(logits[keep].float(), targets[keep]).item())


def threshold_for_agreement(scores: torch.Tensor, agrees: torch.Tensor, target: float) -> float:
    """The lowest threshold for one early exit (tokens with ``score >= threshold`` leave there, the others
    go on to the full model, which agrees with itself) whose overall agreement is at least ``target``.

    The chapter's exercise; :func:`eelib.policies.calibrate` does the same for several exits.

    Args:
        scores: ``(N,)`` the exit's confidence (higher = more confident, e.g. max_prob).
        agrees: ``(N,)`` booleans: does the exit's top-1 equal the full model's.
        target: the fraction of all N tokens that must agree, in (0, 1].

    Returns:
        The threshold (one of the scores), or ``inf`` if no token can leave early.
    """
    scores, agrees = torch.as_tensor(scores).double().flatten(), torch.as_tensor(agrees).bool().flatten()
    if len(scores) != len(agrees) or len(scores) == 0:
        raise ValueError(f"scores ({len(scores)}) and agrees ({len(agrees)}) must be non-empty and of the same length")
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1], got {target!r}")
    allowed = math.floor((1 - target) * len(scores) + 1e-9)  # disagreements the target tolerates
    best = math.inf
    for t in torch.unique(scores).flip(0).tolist():  # from the strictest threshold to the loosest
        if int((~agrees & (scores >= t)).sum()) > allowed:
            break
        best = t
    return best


@torch.no_grad()
def agreement_by_layer(ee: EarlyExitLM, text: str, *, max_tokens: int | None = None) -> tuple[float, ...]:
    """Share of the tokens of ``text`` at which each exit's top-1 equals the final exit's (every exit of ``ee``,
    the final one last: 1.0), over non-overlapping windows of the context length, without storing logits."""
    check_exits(ee, "agreement_by_layer")
    _check_max_tokens(max_tokens, optional=True)
    ids = encode(ee.lm, text)
    ids = ids if max_tokens is None else ids[: max_tokens + 1]
    if len(ids) < 2:
        raise ValueError("text must have at least 2 tokens: one to read and one to predict")
    same = torch.zeros(ee.num_exits, dtype=torch.float64)
    n = 0
    for start in range(0, len(ids) - 1, ee.lm.context_length):
        chunk = ids[start:start + ee.lm.context_length][: len(ids) - 1 - start]
        top = ee.exit_logits(chunk).argmax(-1)  # (E, T)
        same += (top == top[-1]).sum(1).double().cpu()
        n += top.shape[1]
    return tuple(round(float(v), 6) for v in same / n)


# --- training the exit heads -----------------------------------------------------------------
