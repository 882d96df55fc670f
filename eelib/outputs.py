"""Every exit's logits on a data set: what the decision layer (policies, rejection) reads, for both halves.

An image model's `eelib.vision.exits.exit_outputs` and a language model's
`eelib.lm.exits.token_exit_outputs` both return an `ExitOutputs`: one row of logits per exit
(shallowest first, the final layer last), one label per sample (for tokens: the next token, or the
full model's choice when the target is agreement).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ExitOutputs:
    """The logits of every exit on a data set, computed once and analysed many times.

    Attributes:
        logits: ``(num_exits, N, num_classes)``, on the CPU.
        labels: ``(N,)``.
        exit_names: one per exit.
    """

    logits: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    exit_names: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("logits", "labels"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if self.logits.ndim != 3:
            raise ValueError(f"logits must have shape (num_exits, N, num_classes), got {tuple(self.logits.shape)}")
        if not self.logits.is_floating_point():
            raise TypeError(f"logits must be floating point (the exits' raw scores before softmax), got {self.logits.dtype}")
        if self.labels.shape != (self.logits.shape[1],):
            raise ValueError(f"labels must have shape ({self.logits.shape[1]},), got {tuple(self.labels.shape)}")
        if self.labels.numel():
            classes = self.logits.shape[2]
            if self.labels.is_floating_point() or self.labels.is_complex() or self.labels.dtype == torch.bool:
                raise TypeError(f"labels must be integer class indices, got {self.labels.dtype}")
            lo, hi = torch.stack(torch.aminmax(self.labels)).tolist()  # one pass, one transfer of two numbers
            if lo < 0 or hi >= classes:
                raise ValueError(f"labels must be class indices from 0 to {classes - 1} (the logits have {classes} "
                                 f"classes), got values from {lo} to {hi}")
        if len(self.exit_names) != self.logits.shape[0]:
            raise ValueError(f"exit_names has {len(self.exit_names)} names for {self.logits.shape[0]} exits")

    @property
    def num_exits(self) -> int:
        return self.logits.shape[0]

    @property
    def predictions(self) -> torch.Tensor:
        """``(num_exits, N)`` predicted classes."""
        return self.logits.argmax(-1)

    @property
    def correct(self) -> torch.Tensor:
        """``(num_exits, N)`` booleans: is exit k right on sample i."""
        return self.predictions == self.labels

    def accuracy_per_exit(self) -> list[float]:
        """Accuracy (fraction) of each exit when every sample takes it."""
        return self.correct.float().mean(1).tolist()
