"""Training and evaluation of image classifiers, with per-epoch history and gradient norms.

``train`` runs mini-batch SGD with momentum and a one-cycle learning-rate schedule (a short
warm-up, then a cosine decay), showing ``tqdm`` progress bars, and returns a :class:`History`
with one :class:`EpochRecord` per epoch. ``evaluate`` gives loss and accuracy on a loader;
``gradient_norms`` measures, for one batch, how large the gradient of each layer's weights is —
the quantity that shows why very deep plain networks are hard to train.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .device import get_device


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch of training measured."""

    epoch: int
    train_loss: float  # mean cross-entropy over the epoch's batches (nats)
    train_accuracy: float  # fraction right on the training batches, while training
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    step_losses: tuple[float, ...] = field(default=(), repr=False)  # every batch's loss


@dataclass(frozen=True)
class History:
    """The per-epoch records of a training run."""

    epochs: tuple[EpochRecord, ...]

    def column(self, name: str) -> list:
        """One field of every epoch, e.g. ``history.column("val_accuracy")``."""
        if name not in EpochRecord.__dataclass_fields__:
            raise ValueError(f"name={name!r} is not a field of EpochRecord; allowed: "
                             f"{', '.join(EpochRecord.__dataclass_fields__)}")
        return [getattr(r, name) for r in self.epochs]

    @property
    def step_losses(self) -> list[float]:
        """Every batch's training loss, in order."""
        return [loss for r in self.epochs for loss in r.step_losses]

    def to_dict(self) -> dict:
        return {"epochs": [asdict(r) for r in self.epochs]}

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        return cls(tuple(EpochRecord(**{**r, "step_losses": tuple(r.get("step_losses", ()))})
                         for r in data["epochs"]))


@dataclass(frozen=True)
class EvalResult:
    """Loss (mean cross-entropy, nats) and accuracy (fraction) over ``n`` samples."""

    loss: float
    accuracy: float
    n: int


def _check_positive(name: str, value, kind: type = int) -> None:
    kinds = (int, float) if kind is float else (int,)
    if not isinstance(value, kinds) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive {'number' if kind is float else 'integer'}, got {value!r}")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, device: torch.device | str | None = None) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on every batch of ``loader`` (eval mode)."""
    device = torch.device(device) if device is not None else get_device()
    was_training = model.training
    model.eval().to(device)
    total_loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise ValueError("loader is empty: nothing to evaluate")
    return EvalResult(loss=total_loss / n, accuracy=correct / n, n=n)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, *, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, classes)`` and labels ``(N,)`` for every sample of ``loader``, on the CPU."""
    device = torch.device(device) if device is not None else get_device()
    was_training = model.training
    model.eval().to(device)
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x.to(device)).cpu())
        labels.append(y)
    model.train(was_training)
    if not logits:
        raise ValueError("loader is empty: nothing to predict")
    return torch.cat(logits), torch.cat(labels)


def train(model: nn.Module, train_loader: DataLoader, *, epochs: int = 5, lr: float = 0.05,
          momentum: float = 0.9, weight_decay: float = 5e-4, val_loader: DataLoader | None = None,
          device: torch.device | str | None = None, progress: bool = True, desc: str = "train") -> History:
    """Train ``model`` with SGD + momentum and a one-cycle schedule; return the per-epoch history.

    Args:
        model: a classifier mapping a batch of images to logits.
        train_loader: batches of ``(images, labels)``.
        epochs: passes over ``train_loader``.
        lr: the peak learning rate (reached after 20% of the steps, then cosine decay to ~0).
        momentum, weight_decay: SGD's.
        val_loader: if given, evaluated after each epoch.
        device: where to train (default: :func:`eelib.get_device`).
        progress: show a progress bar over the batches.
        desc: the progress bar's label.

    Returns:
        A :class:`History` with one record per epoch. The model is trained in place and left
        in eval mode on ``device``.
    """
    _check_positive("epochs", epochs)
    _check_positive("lr", lr, float)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("train_loader is empty: nothing to train on")
    device = torch.device(device) if device is not None else get_device()
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=0.2,
                                                   cycle_momentum=False)  # keep SGD's momentum as given
    records = []
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        losses, correct, seen = [], 0, 0
        model.train()
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}")
        val = evaluate(model, val_loader, device=device) if val_loader is not None else None
        records.append(EpochRecord(
            epoch=epoch, train_loss=sum(losses) / len(losses), train_accuracy=correct / seen,
            val_loss=val.loss if val else None, val_accuracy=val.accuracy if val else None,
            seconds=time.perf_counter() - start, step_losses=tuple(losses)))
    bar.close()
    model.eval()
    return History(tuple(records))


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   shortcuts: bool = False) -> dict[str, float]:
    """L2 norm of the loss gradient with respect to each layer's weights, input to output.

    One forward and backward pass of the mean cross-entropy on the batch ``(x, y)`` in train
    mode (batch norm uses the batch's statistics, as in training). Nothing in the model changes:
    not its weights, not its ``.grad`` fields, not batch norm's running statistics.

    Args:
        model: the network.
        x, y: a batch of inputs and labels.
        shortcuts: also measure the 1x1 convolutions of the skip connections (modules whose
            name contains ``shortcut``). By default only the main path is measured, so a plain
            and a residual network of the same depth have the same layers, one per depth.

    Returns:
        ``{"<module name>.weight": norm}`` for each ``nn.Conv2d`` and ``nn.Linear``, in the order
        of ``model.named_modules()``, e.g. ``{"stem.0.weight": 0.8, "layer1.0.conv1.weight": ...}``.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    device = next(model.parameters()).device
    names = [f"{mod_name}.weight" for mod_name, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) and (shortcuts or "shortcut" not in mod_name)]
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}  # batch norm's running statistics
    was_training = model.training
    model.train()
    try:
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        grads = torch.autograd.grad(loss, weights)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
    return {n: g.norm().item() for n, g in zip(names, grads)}
