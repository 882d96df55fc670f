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
from eelib._util.progress import tqdm

from eelib._util.device import resolve_device
from eelib._util.eval_mode import eval_mode, train_mode


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


class _Epochs:
    """What :class:`History` and :class:`ExitHistory` share: columns and the step losses."""

    epochs: tuple
    _record: type

    def column(self, name: str) -> list:
        """One field of every epoch, e.g. ``history.column("val_accuracy")``."""
        fields = self._record.__dataclass_fields__
        if name not in fields:
            raise ValueError(f"name={name!r} is not a field of {self._record.__name__}; allowed: {', '.join(fields)}")
        return [getattr(r, name) for r in self.epochs]

    @property
    def step_losses(self) -> list[float]:
        """Every batch's training loss, in order."""
        return [loss for r in self.epochs for loss in r.step_losses]


@dataclass(frozen=True)
class History(_Epochs):
    """The per-epoch records of a training run."""

    epochs: tuple[EpochRecord, ...]
    _record = EpochRecord

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


def _check_run(train_loader: DataLoader, epochs: int, lr: float,
               device: torch.device | str | None) -> tuple[int, torch.device]:
    """Check a training run's arguments; return the steps per epoch and the device."""
    _check_positive("epochs", epochs)
    _check_positive("lr", lr, float)
    if len(train_loader) == 0:
        raise ValueError("train_loader is empty: nothing to train on")
    return len(train_loader), resolve_device(device)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, device: torch.device | str | None = None) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on every batch of ``loader`` (eval mode)."""
    device = resolve_device(device)
    wide = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    total_loss = torch.zeros((), dtype=wide, device=device)  # summed on the device: one sync at the end
    correct, n = torch.zeros((), dtype=torch.long, device=device), 0
    with eval_mode(model):
        model.to(device)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").to(wide)
            correct += (logits.argmax(1) == y).sum()
            n += len(y)
    if n == 0:
        raise ValueError("loader is empty: nothing to evaluate")
    return EvalResult(loss=float(total_loss) / n, accuracy=int(correct) / n, n=n)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, *, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, classes)`` and labels ``(N,)`` for every sample of ``loader``, on the CPU."""
    device = resolve_device(device)
    logits, labels = [], []
    with eval_mode(model):
        model.to(device)
        for x, y in loader:
            logits.append(model(x.to(device)).cpu())
            labels.append(y)
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
    steps_per_epoch, device = _check_run(train_loader, epochs, lr, device)
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=0.2,
                                                   cycle_momentum=False)  # keep SGD's momentum as given
    records = []
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        losses, correct, seen = [], torch.zeros((), dtype=torch.long, device=device), 0
        model.train()
        for step, (x, y) in enumerate(train_loader):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())  # kept on the device: no host sync per step
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            _progress(bar, step, steps_per_epoch, epoch, losses)
        losses = torch.stack(losses).tolist()  # one sync per epoch
        val = evaluate(model, val_loader, device=device) if val_loader is not None else None
        records.append(EpochRecord(
            epoch=epoch, train_loss=sum(losses) / len(losses), train_accuracy=int(correct) / seen,
            val_loss=val.loss if val else None, val_accuracy=val.accuracy if val else None,
            seconds=time.perf_counter() - start, step_losses=tuple(losses)))
    bar.close()
    model.eval()
    return History(tuple(records))


_PROGRESS_EVERY = 25  # steps between two updates of the progress bar's loss (each one syncs the host)


def _progress(bar, step: int, steps_per_epoch: int, epoch: int, losses: list[torch.Tensor]) -> None:
    """Advance the progress bar; show the latest loss every few steps only (reading it syncs the device)."""
    bar.update(1)
    if bar.disable:
        return
    if step % _PROGRESS_EVERY == 0 or step == steps_per_epoch - 1:
        bar.set_postfix(epoch=epoch, loss=f"{losses[-1].item():.3f}")


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
    try:
        with train_mode(model):
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            grads = torch.autograd.grad(loss, weights)
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
    return {n: g.norm().item() for n, g in zip(names, grads)}


# --- early-exit networks --------------------------------------------------------------------

EXIT_MODES = ("joint", "frozen", "distill")


@dataclass(frozen=True)
class ExitEpochRecord:
    """What one epoch of training an early-exit network measured, per exit."""

    epoch: int
    train_loss: float  # mean of the weighted total loss over the epoch's batches
    exit_losses: tuple[float, ...]  # mean cross-entropy of each exit on the training batches (nats)
    val_accuracy: tuple[float, ...] | None  # accuracy (fraction) of each exit on the validation split
    seconds: float
    step_losses: tuple[float, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class ExitHistory(_Epochs):
    """The per-epoch records of training an early-exit network."""

    epochs: tuple[ExitEpochRecord, ...]
    mode: str
    _record = ExitEpochRecord

    def to_dict(self) -> dict:
        return {"mode": self.mode, "epochs": [asdict(r) for r in self.epochs]}

    @classmethod
    def from_dict(cls, data: dict) -> "ExitHistory":
        def record(r: dict) -> ExitEpochRecord:
            val = r.get("val_accuracy")
            return ExitEpochRecord(**{**r, "exit_losses": tuple(r["exit_losses"]),
                                      "val_accuracy": None if val is None else tuple(val),
                                      "step_losses": tuple(r.get("step_losses", ()))})
        return cls(tuple(record(r) for r in data["epochs"]), data["mode"])


def exit_loss(logits: list[torch.Tensor], y: torch.Tensor, *, mode: str = "joint",
              exit_weights: tuple[float, ...] | None = None, distill_alpha: float = 0.5,
              temperature: float = 3.0) -> tuple[torch.Tensor, list[float]]:
    """The training loss of an early-exit network on one batch, and each exit's cross-entropy.

    * ``joint``: ``sum_k w_k * CE(logits_k, y)`` (all weights 1 unless ``exit_weights``);
    * ``frozen``: the same sum over the early exits only (the backbone and its classifier are frozen);
    * ``distill``: the final exit learns from the labels, every early exit from a mix of the
      labels and the final exit's softened prediction (self-distillation, Zhang et al., 2019,
      "Be Your Own Teacher"): ``alpha * CE(logits_k, y) + (1 - alpha) * T^2 * KL(p_final^T || p_k^T)``,
      the final exit's logits detached (the teacher is not pulled towards its students).
    """
    total, ces = _exit_loss(logits, y, mode=mode, exit_weights=exit_weights, distill_alpha=distill_alpha,
                            temperature=temperature)
    return total, torch.stack(ces).tolist()


def _exit_loss(logits: list[torch.Tensor], y: torch.Tensor, *, mode: str, exit_weights: tuple[float, ...] | None,
               distill_alpha: float, temperature: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    if mode not in EXIT_MODES:
        raise ValueError(f"mode={mode!r} is not a training mode; allowed: {', '.join(EXIT_MODES)}")
    if exit_weights is not None and len(exit_weights) != len(logits):
        raise ValueError(f"exit_weights has {len(exit_weights)} values but there are {len(logits)} exits")
    ces = [F.cross_entropy(z, y) for z in logits]
    weights = exit_weights or (1.0,) * len(logits)
    if mode == "frozen":
        total = sum(w * ce for w, ce in zip(weights[:-1], ces[:-1]))
    elif mode == "distill":
        teacher = F.log_softmax(logits[-1].detach() / temperature, -1)
        total = weights[-1] * ces[-1]
        for w, z, ce in zip(weights[:-1], logits[:-1], ces[:-1]):
            kd = F.kl_div(F.log_softmax(z / temperature, -1), teacher, log_target=True,
                          reduction="batchmean") * temperature**2
            total = total + w * (distill_alpha * ce + (1 - distill_alpha) * kd)
    else:
        total = sum(w * ce for w, ce in zip(weights, ces))
    return total, [ce.detach() for ce in ces]


@torch.no_grad()
def _exit_accuracies(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, ...]:
    correct, n = None, 0
    with eval_mode(model):
        for x, y in loader:
            y = y.to(device)
            right = torch.stack([(z.argmax(1) == y).sum() for z in model(x.to(device))])
            correct = right if correct is None else correct + right
            n += len(y)
    if n == 0:
        raise ValueError("val_loader is empty: nothing to evaluate")
    return tuple((correct.float() / n).tolist())


def train_exits(model: nn.Module, train_loader: DataLoader, *, mode: str = "joint", epochs: int = 4,
                lr: float = 0.05, exit_weights: tuple[float, ...] | None = None, distill_alpha: float = 0.5,
                temperature: float = 3.0, momentum: float = 0.9, weight_decay: float = 5e-4,
                val_loader: DataLoader | None = None, device: torch.device | str | None = None,
                progress: bool = True, desc: str | None = None) -> ExitHistory:
    """Train an :class:`eelib.vision.exits.EarlyExitNet` (SGD + one-cycle, as :func:`train`).

    Args:
        model: the early-exit network; its ``forward`` returns the logits of every exit.
        train_loader: batches of ``(images, labels)``.
        mode: ``"joint"`` — backbone and heads together, a weighted sum of every exit's loss
            (SDN-style weights can be given, e.g. growing with depth); ``"frozen"`` — the
            backbone is frozen (weights and batch-norm statistics), only the early heads learn:
            a trained network gains exits without changing its final accuracy; ``"distill"`` —
            joint training where each early exit also learns from the final exit's prediction
            (see :func:`exit_loss`).
        epochs, lr, momentum, weight_decay: as in :func:`train`.
        exit_weights: one weight per exit (default all 1).
        distill_alpha, temperature: the label/teacher mix and the softening temperature of ``distill``.
        val_loader: if given, the accuracy of every exit is measured after each epoch.
        device, progress, desc: where to train, whether to show a progress bar, its label.

    Returns:
        An :class:`ExitHistory`; the model is trained in place and left in eval mode.
    """
    if mode not in EXIT_MODES:
        raise ValueError(f"mode={mode!r} is not a training mode; allowed: {', '.join(EXIT_MODES)}")
    num_exits = model.num_exits
    if exit_weights is not None:
        exit_weights = tuple(float(w) for w in exit_weights)
        if len(exit_weights) != num_exits or any(w < 0 for w in exit_weights):
            raise ValueError(f"exit_weights must be {num_exits} non-negative numbers (one per exit), got {exit_weights}")
    if not 0 <= distill_alpha <= 1:
        raise ValueError(f"distill_alpha must be in [0, 1], got {distill_alpha!r}")
    _check_positive("temperature", temperature, float)
    steps_per_epoch, device = _check_run(train_loader, epochs, lr, device)
    model.to(device)
    frozen = mode == "frozen"
    trainable = [p.requires_grad for p in model.backbone.parameters()]
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen and p.requires_grad)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                                   pct_start=0.2, cycle_momentum=False)
    records = []
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc or f"training exits ({mode})", disable=not progress, leave=False)
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            if frozen:
                model.backbone.eval()  # frozen batch norm: running statistics stay as trained
            losses, per_exit = [], []
            for step, (x, y) in enumerate(train_loader):
                x, y = x.to(device), y.to(device)
                total, ces = _exit_loss(model(x), y, mode=mode, exit_weights=exit_weights,
                                        distill_alpha=distill_alpha, temperature=temperature)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                schedule.step()
                losses.append(total.detach())  # kept on the device: no host sync per step
                per_exit.append(torch.stack(ces))
                _progress(bar, step, steps_per_epoch, epoch, losses)
            losses = torch.stack(losses).tolist()  # one sync per epoch
            exit_losses = torch.stack(per_exit).mean(0).tolist()
            val = _exit_accuracies(model, val_loader, device) if val_loader is not None else None
            records.append(ExitEpochRecord(
                epoch=epoch, train_loss=sum(losses) / len(losses),
                exit_losses=tuple(float(v) for v in exit_losses),
                val_accuracy=val, seconds=time.perf_counter() - start, step_losses=tuple(losses)))
    finally:
        bar.close()
        for p, flag in zip(model.backbone.parameters(), trainable):
            p.requires_grad_(flag)  # as the caller left them
    model.eval()
    return ExitHistory(tuple(records), mode)
