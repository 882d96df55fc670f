"""Checks for the exercises: compare a student's answer with eelib's reference.

Each ``check_*`` function runs the student's function on a few cases, compares the result with
eelib's own implementation, and raises an ``AssertionError`` whose message says what differs
and what to look at. On success it prints a short confirmation. A ``NotImplementedError`` from
an unfinished exercise is let through unchanged: it already says what to do. The checks use
their own random numbers; the caller's random state is left as it was.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from eelib.vision.resnet import BasicBlock, ResNet, ResNetConfig
from eelib.vision.train import gradient_norms


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def _refuse_block_call(module, args):
    raise AssertionError("residual_forward called block(x) (or block.forward): compute the output from the "
                         "block's modules instead — block.conv1, block.bn1, block.conv2, block.bn2, block.shortcut")


def _residual_hint(block: BasicBlock, x: torch.Tensor, got: torch.Tensor | None) -> str:
    """What a wrong answer most likely got wrong, by comparing it with the usual mistakes."""
    with torch.no_grad():
        main = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        skip = block.shortcut(x) if block.shortcut is not None else 0
        if got is None:  # the student's code raised
            if block.shortcut is not None and main.shape != x.shape:
                return ("this block changes the shape, so x cannot be added as it is: add block.shortcut(x) "
                        "(a 1x1 convolution + batch norm here), not x")
            return "compare step by step with the formula above"
        if block.shortcut is not None and _close(got, torch.relu(main)):
            return "the skip connection is missing: add block.shortcut(x) before the last relu"
        if block.shortcut is not None and _close(got, torch.relu(main) + skip):
            return "apply the final relu after adding the shortcut, not before"
        if _close(got, main + skip):
            return "the final relu is missing"
        if block.shortcut is None and _close(got, torch.relu(main + x)):
            return "this is a plain block (block.shortcut is None): there is nothing to add"
        no_mid_relu = block.bn2(block.conv2(block.bn1(block.conv1(x))))
        if _close(got, torch.relu(no_mid_relu + skip)):
            return "the relu between bn1 and conv2 is missing"
    return ("compare step by step with the formula: conv1, bn1, relu, conv2, bn2, + block.shortcut(x) "
            "(only if block.shortcut is not None), relu")


def check_residual_forward(residual_forward: Callable[[BasicBlock, torch.Tensor], torch.Tensor]) -> None:
    """Check ``residual_forward(block, x)`` against ``block(x)`` for eelib's BasicBlock.

    Cases: a block that keeps the shape (identity shortcut), one that halves the resolution and
    doubles the channels (1x1 convolution shortcut), and a plain block (no shortcut). The
    student's function may not simply call ``block(x)``.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        cases = [("a block that keeps the shape (shortcut = identity)", BasicBlock(8, 8, 1)),
                 ("a block that halves the resolution and doubles the channels (shortcut = 1x1 conv + BN)",
                  BasicBlock(8, 16, 2)),
                 ("a plain block (block.shortcut is None: no skip connection)", BasicBlock(8, 8, 1, residual=False))]
        x = torch.randn(4, 8, 12, 12)
        for _, block in cases:
            block.eval()
            with torch.no_grad():
                for p in block.parameters():  # move batch norm away from the identity, so mistakes show
                    p.add_(0.1 * torch.randn_like(p))
    for what, block in cases:
        with torch.no_grad():
            expected = block(x)
        handle = block.register_forward_pre_hook(_refuse_block_call)
        try:
            with torch.no_grad():
                got = residual_forward(block, x)
        except (NotImplementedError, AssertionError):
            raise
        except Exception as err:  # the student's code crashed: say where to look
            raise AssertionError(f"For {what}: residual_forward raised {type(err).__name__}: {err}. "
                                 f"Hint: {_residual_hint(block, x, None)}.") from err
        finally:
            handle.remove()
        assert isinstance(got, torch.Tensor), f"residual_forward returned {type(got).__name__}, expected a tensor"
        assert got.shape == expected.shape, (
            f"For {what}: output shape {tuple(got.shape)}, expected {tuple(expected.shape)}. "
            f"Does the input go through conv1 (which may have stride 2) and conv2?")
        if not _close(got, expected):
            raise AssertionError(f"For {what}: the output differs from block(x) "
                                 f"(max difference {(got - expected).abs().max().item():.3g}). "
                                 f"Hint: {_residual_hint(block, x, got)}.")
    print(f"Correct: residual_forward matches eelib's BasicBlock on all {len(cases)} cases.")


def check_gradient_norms(student_gradient_norms: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], dict]) -> None:
    """Check ``student_gradient_norms(model, x, y)`` against :func:`eelib.vision.train.gradient_norms`.

    The model handed to the student's function is in eval mode (as a trained model is) and has
    stale values in its ``.grad`` fields, so forgetting ``model.train()`` or accumulating into
    old gradients shows.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ResNet(ResNetConfig(depth=8, width=4))
        x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 10, (6,))
        model.train()(x)  # one batch in train mode: batch norm's running statistics move away from 0 / 1
        model.eval()
        for p in model.parameters():
            p.grad = torch.randn_like(p)  # stale gradients from an earlier step
    expected = gradient_norms(copy.deepcopy(model), x, y)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        got = student_gradient_norms(model, x, y)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        hint = ("is the forward pass inside torch.no_grad()? Gradients need the autograd graph"
                if "does not require grad" in str(err) else "read the error above")
        raise AssertionError(f"layer_gradient_norms raised {type(err).__name__}: {err}. Hint: {hint}.") from err
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), (
            f"{n} changed: measuring gradients must not update the weights (no optimizer step)")
    assert isinstance(got, dict), f"return a dict {{layer name: norm}}, got {type(got).__name__}"
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    assert not missing and not extra, (
        f"the keys differ: missing {missing[:3]}, unexpected {extra[:3]}. Use f'{{module_name}}.weight' for each "
        f"module in model.named_modules() that is an nn.Conv2d or nn.Linear and whose name does not contain "
        f"'shortcut' (batch-norm weights are not included).")
    assert list(got) == list(expected), "list the layers in the order model.named_modules() gives them"
    for n in expected:
        value = float(got[n])
        assert abs(value - expected[n]) <= 1e-4 * max(1.0, expected[n]), (
            f"{n}: got {value:.5g}, expected {expected[n]:.5g}. Is it the L2 norm of the loss's *gradient* "
            f"(not of the weight itself), with the loss the mean cross-entropy of the batch, computed in train "
            f"mode (call model.train(): the model you get may be in eval mode)? If you used loss.backward(), "
            f"old values in .grad add up with the new ones: clear them first (model.zero_grad()) or use "
            f"torch.autograd.grad.")
    print(f"Correct: gradient norms match for all {len(expected)} layers.")


# --- chapters 2-4: early exits --------------------------------------------------------------

def _call(name: str, fn: Callable, *args):
    try:
        return fn(*args)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        raise AssertionError(f"{name} raised {type(err).__name__}: {err}. Hint: read the error above.") from err


def _tiny_exit_net(seed: int = 0):
    from eelib.vision.exits import EarlyExitNet

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = EarlyExitNet(ResNet(ResNetConfig(depth=8, width=4)), ("stem", "layer1", "layer2"), pool_size=2)
        x = torch.randn(40, 1, 12, 12)
    return model.eval(), x


def check_accuracy_per_exit(accuracy_per_exit: Callable[[list, torch.Tensor], list]) -> None:
    """Check ``accuracy_per_exit(logits, labels)``: a list of per-exit accuracies (fractions)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        labels = torch.randint(0, 10, (50,))
        logits = [torch.randn(50, 10) + 3 * k * torch.nn.functional.one_hot(labels, 10) for k in range(4)]
    expected = [(z.argmax(1) == labels).float().mean().item() for z in logits]
    got = _call("accuracy_per_exit", accuracy_per_exit, logits, labels)
    assert isinstance(got, (list, tuple)) and len(got) == len(expected), (
        f"return one accuracy per exit ({len(expected)} values), got {got!r}")
    got = [float(g) for g in got]
    if all(abs(g - 100 * e) < 1e-4 for g, e in zip(got, expected)):
        raise AssertionError("these are percentages: return fractions between 0 and 1")
    wrong_dim = [(z.argmax(0)[:len(labels)] == labels[:z.shape[1]]).float().mean().item() for z in logits]
    for k, (g, e) in enumerate(zip(got, expected)):
        hint = ("take argmax over the classes (dim=1), not over the samples"
                if abs(g - wrong_dim[k]) < 1e-6 and abs(g - e) > 1e-6 else
                "the prediction of exit k is logits[k].argmax(dim=1); compare it with the labels and average")
        assert abs(g - e) < 1e-6, f"exit {k}: got {g:.4f}, expected {e:.4f}. Hint: {hint}."
    print(f"Correct: accuracies of all {len(expected)} exits match.")


def check_joint_loss(joint_loss: Callable[[list, torch.Tensor, list], torch.Tensor]) -> None:
    """Check ``joint_loss(logits, y, weights)`` = sum_k weights[k] * cross_entropy(logits[k], y)."""
    import torch.nn.functional as F

    with torch.random.fork_rng():
        torch.manual_seed(2)
        y = torch.randint(0, 10, (16,))
        logits = [torch.randn(16, 10, requires_grad=True) for _ in range(3)]
    weights = [0.3, 0.6, 1.0]
    ces = [F.cross_entropy(z, y) for z in logits]
    expected = sum(w * ce for w, ce in zip(weights, ces))
    got = _call("joint_loss", joint_loss, logits, y, weights)
    assert isinstance(got, torch.Tensor) and got.ndim == 0, f"return a scalar tensor, got {got!r}"
    assert got.requires_grad, ("the loss does not require grad: keep it a tensor built from the logits "
                               "(no .item(), no torch.no_grad()), so that backward() can train every exit")
    if abs(got.item() - expected.item()) > 1e-5:
        if abs(got.item() - sum(ces).item()) < 1e-5:
            hint = "the weights are not applied: multiply each exit's loss by weights[k]"
        elif abs(got.item() - expected.item() / len(ces)) < 1e-5:
            hint = "a weighted sum, not a mean: do not divide by the number of exits"
        elif abs(got.item() - ces[-1].item()) < 1e-5:
            hint = "only the final exit's loss is there: add every exit's loss"
        else:
            hint = "cross-entropy of each exit's logits with the labels y, times its weight, summed"
        raise AssertionError(f"got {got.item():.5f}, expected {expected.item():.5f}. Hint: {hint}.")
    print("Correct: the joint loss matches sum_k w_k * CE(logits_k, y).")


def check_conv_flops(conv_flops: Callable[[torch.nn.Conv2d, int, int], int]) -> None:
    """Check ``conv_flops(conv, height, width)`` against ``FlopCounterMode`` on one image."""
    from eelib.vision.cost import count_flops

    cases = [(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), 16, 16),
             (torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), 16, 16),
             (torch.nn.Conv2d(16, 32, 1, stride=2, bias=True), 15, 15),
             (torch.nn.Conv2d(4, 6, 5, padding=0, bias=False), 12, 10)]
    for conv, h, w in cases:
        expected = count_flops(conv, torch.zeros(1, conv.in_channels, h, w))
        got = _call("conv_flops", conv_flops, conv, h, w)
        if got != expected:
            if got * 2 == expected:
                hint = "one multiply-accumulate counts as 2 FLOPs (a multiply and an add)"
            elif got == expected * conv.stride[0] ** 2 // 1:
                hint = "the output is smaller than the input when stride > 1: use the output's height and width"
            else:
                hint = ("FLOPs = 2 x out_channels x out_height x out_width x in_channels x kernel_h x kernel_w, "
                        "with out_height = (height + 2*padding - kernel) // stride + 1; FlopCounterMode "
                        "does not count the bias")
            raise AssertionError(f"{conv}: input {h}x{w}: got {got}, FlopCounterMode counts {expected}. Hint: {hint}.")
    print(f"Correct: conv_flops matches FlopCounterMode on all {len(cases)} convolutions.")


def check_cumulative_costs(cumulative_costs: Callable[[list, list], list]) -> None:
    """Check ``cumulative_costs(segment_flops, head_flops)`` against :func:`eelib.vision.cost.exit_costs`."""
    from eelib.vision.cost import count_flops, exit_costs

    model, x = _tiny_exit_net()
    segments, heads, h = [], [], x[:1]
    for k in range(model.num_exits):
        segments.append(count_flops(model.segment, k, h))
        with torch.no_grad():
            h = model.segment(k, h)
        heads.append(count_flops(model.head, k, h))
    expected = list(exit_costs(model, (1, 12, 12)).flops)
    got = _call("cumulative_costs", cumulative_costs, list(segments), list(heads))
    assert isinstance(got, (list, tuple)) and len(got) == len(expected), (
        f"return one cost per exit ({len(expected)} values), got {got!r}")
    got = [int(g) for g in got]
    if got != expected:
        backbone_only = [sum(segments[:k + 1]) for k in range(len(segments))]
        own_head = [sum(segments[:k + 1]) + heads[k] for k in range(len(segments))]
        if got == backbone_only:
            hint = "the heads cost something too: add the heads evaluated on the way"
        elif got == own_head:
            hint = ("a sample that leaves at exit k has also paid for heads 0..k-1 (they were evaluated and "
                    "did not let it leave): add every head up to and including k")
        else:
            hint = "exit k costs segments 0..k plus heads 0..k (cumulative sums)"
        raise AssertionError(f"got {got}, expected {expected}. Hint: {hint}.")
    print(f"Correct: cumulative costs of all {len(expected)} exits match eelib.vision.cost.exit_costs.")


def check_entropy(entropy_measure: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Check ``entropy_measure(logits)`` (nats, one value per row) against :func:`eelib.policies.entropy`."""
    from eelib.policies import entropy

    with torch.random.fork_rng():
        torch.manual_seed(3)
        logits = torch.randn(32, 10) * 4
    logits[0] = torch.tensor([200.0] + [0.0] * 9)  # a (numerically) certain prediction: entropy 0, no nan
    expected = entropy(logits)
    got = _call("entropy_measure", entropy_measure, logits.clone())
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape, (
        f"return a tensor of shape {tuple(expected.shape)} (one entropy per row), got "
        f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
    if not torch.isfinite(got).all():
        raise AssertionError("some entropies are nan or inf: p * log(p) with p = 0 gives 0 * -inf. Hint: use "
                             "torch.log_softmax for log p (it is finite), and p = log_p.exp().")
    if not torch.allclose(got, expected, atol=1e-4):
        p = torch.softmax(logits, -1)
        if torch.allclose(got, -expected, atol=1e-4):
            hint = "the sign is wrong: entropy is -sum p log p (it is >= 0)"
        elif torch.allclose(got, expected / torch.log(torch.tensor(2.0)), atol=1e-4):
            hint = "these are bits (log base 2): use the natural logarithm (nats)"
        elif torch.allclose(got, -(p * p.log()).nan_to_num().sum(0)[:len(got)], atol=1e-4):
            hint = "sum over the classes (dim=-1), not over the samples"
        else:
            hint = "p = softmax(logits) over the classes, entropy = -sum_c p_c log p_c for each row"
        raise AssertionError(f"entropy_measure differs from eelib's by up to "
                             f"{(got - expected).abs().max().item():.4f} nats. Hint: {hint}.")
    print("Correct: entropy_measure matches eelib.policies.entropy.")


def check_route_batch(route_batch: Callable) -> None:
    """Check ``route_batch(model, x, threshold)`` -> ``(predictions, exits)`` against eelib's routing,
    and that samples that left are not processed by the later segments."""
    from eelib.vision.dynamic import route
    from eelib.policies import ExitPolicy, max_prob

    model, x = _tiny_exit_net()
    with torch.no_grad():
        scores = max_prob(torch.stack(model(x)))
    threshold = float(scores[0].quantile(0.8))  # with seed 0: 8, 11, 7 and 14 samples leave at exits 0..3
    expected_pred, expected_exits = route(model, x, ExitPolicy("max_prob", (threshold,) * (model.num_exits - 1)))
    seen = []
    hooks = [model._units[model._ends[k - 1]][1].register_forward_pre_hook(
        lambda mod, args, k=k: seen.append((k, args[0].shape[0]))) for k in range(1, model.num_exits)]
    try:
        got = _call("route_batch", route_batch, model, x.clone(), threshold)
    finally:
        for hook in hooks:
            hook.remove()
    assert isinstance(got, tuple) and len(got) == 2, "return a tuple (predictions, exits)"
    pred, exits = (torch.as_tensor(t) for t in got)
    assert exits.shape == expected_exits.shape, f"exits must have shape {tuple(expected_exits.shape)}, got {tuple(exits.shape)}"
    if not torch.equal(exits.long(), expected_exits):
        i = int((exits.long() != expected_exits).nonzero()[0])
        raise AssertionError(f"sample {i} left at exit {int(exits[i])}, expected exit {int(expected_exits[i])}. "
                             f"Hint: a sample leaves at the first exit whose max softmax probability is >= "
                             f"threshold; the final exit takes every sample still left. Keep track of which "
                             f"original index each remaining sample has.")
    if not torch.equal(pred.long(), expected_pred):
        i = int((pred.long() != expected_pred).nonzero()[0])
        raise AssertionError(f"sample {i}: predicted {int(pred[i])}, expected {int(expected_pred[i])} (the argmax of "
                             f"the exit it left at). Hint: write each prediction back at the sample's original index.")
    remaining = [(expected_exits >= k).sum().item() for k in range(1, model.num_exits)]
    for k, n in zip(range(1, model.num_exits), remaining):
        sizes = [b for j, b in seen if j == k]
        assert sizes or n == 0, f"segment {k} never ran, but {n} samples needed it"
        assert max(sizes, default=0) <= n, (f"segment {k} ran on {max(sizes)} samples, but only {n} were still in the batch: "
                                 f"remove the samples that left (h = h[keep]) so the later blocks skip them")
    print(f"Correct: the same exits and predictions as eelib's routing, and segments 1..{model.num_exits - 1} ran "
          f"on {remaining} samples only.")


# --- chapter 5: rejection -------------------------------------------------------------------------

def _tensor_or_fail(name: str, value, n: int) -> torch.Tensor:
    try:
        t = torch.as_tensor(value).double().flatten()
    except Exception as err:
        raise AssertionError(f"{name} must be a tensor (or list) of {n} numbers, got {type(value).__name__}") from err
    assert len(t) == n, f"{name} has {len(t)} values, expected {n} (one per sample)"
    return t


def check_risk_coverage(risk_coverage: Callable) -> None:
    """Check ``risk_coverage(scores, correct)`` -> ``(coverage, risk)``: one point per sample, the most
    confident first, against :func:`eelib.rejection.risk_coverage_curve` (distinct scores, max probability)."""
    from eelib.rejection import risk_coverage_curve

    with torch.random.fork_rng():
        torch.manual_seed(5)
        scores = torch.rand(40) * 0.9 + 0.1
        correct = torch.rand(40) < 0.4 + 0.6 * scores
    correct[scores.argmax()] = False  # the most confident sample is wrong: the order shows
    expected = risk_coverage_curve(scores, correct)
    got = _call("risk_coverage", risk_coverage, scores.clone(), correct.clone())
    assert isinstance(got, tuple) and len(got) == 2, "return a tuple (coverage, risk)"
    cov, risk = (_tensor_or_fail(name, g, len(scores)) for name, g in zip(("coverage", "risk"), got))
    n = len(scores)
    if not torch.allclose(cov, expected.coverage, atol=1e-6):
        if torch.allclose(cov, 100 * expected.coverage, atol=1e-4):
            raise AssertionError("coverage is in percent: return fractions between 0 and 1")
        raise AssertionError(f"coverage starts {cov[:3].tolist()}, expected {expected.coverage[:3].tolist()}. "
                             f"Hint: point k accepts the k most confident samples: coverage = k / {n}, k = 1..{n}.")
    if not torch.allclose(risk, expected.risk, atol=1e-6):
        order = torch.argsort(scores, descending=True)
        wrong = (~correct[order]).double()
        k = torch.arange(1, n + 1, dtype=torch.float64)
        ascending = torch.cumsum((~correct[torch.argsort(scores)]).double(), 0) / k
        if torch.allclose(risk, torch.cumsum(wrong, 0) / n, atol=1e-6):
            hint = ("that is the error count over *all* samples; the selective risk divides by the number of "
                    "*accepted* samples (k)")
        elif torch.allclose(risk, 1 - torch.cumsum(wrong, 0) / k, atol=1e-6):
            hint = "that is the accuracy of the accepted samples; the risk is the fraction that is wrong"
        elif torch.allclose(risk, ascending, atol=1e-6):
            hint = "the least confident samples come first: sort the scores in descending order"
        else:
            hint = "sort by score, most confident first; risk[k-1] = errors among the first k / k"
        i = int((risk - expected.risk).abs().argmax())
        raise AssertionError(f"risk at coverage {float(expected.coverage[i]):.3f}: got {float(risk[i]):.4f}, "
                             f"expected {float(expected.risk[i]):.4f}. Hint: {hint}.")
    print(f"Correct: the risk-coverage curve matches eelib's ({n} points, AURC {expected.aurc:.4f}).")


def check_guaranteed_threshold(choose_threshold: Callable) -> None:
    """Check ``choose_threshold(scores, correct, alpha, delta)`` -> threshold against
    :func:`eelib.rejection.guaranteed_threshold` (max probability), on three calibration sets."""
    import math

    from eelib.rejection import binomial_tail, guaranteed_threshold, risk_coverage_curve

    cases = []
    with torch.random.fork_rng():
        torch.manual_seed(6)
        for n, alpha, delta in ((1000, 0.05, 0.1), (600, 0.02, 0.05), (100, 0.01, 0.1)):
            scores = torch.rand(n, dtype=torch.float64)
            correct = torch.rand(n, dtype=torch.float64) >= 0.3 * (1 - scores) ** 2
            correct[torch.argsort(scores, descending=True)[min(250, n - 1)]] = False  # an early error
            cases.append((scores, correct, alpha, delta))
    for scores, correct, alpha, delta in cases:
        expected = guaranteed_threshold(scores, correct, alpha=alpha, delta=delta)
        got = _call("choose_threshold", choose_threshold, scores.clone(), correct.clone(), alpha, delta)
        assert isinstance(got, (int, float)) or (isinstance(got, torch.Tensor) and got.numel() == 1), (
            f"return one threshold (a float), got {type(got).__name__}")
        got = float(got)
        if got == expected.threshold or (math.isinf(got) and math.isinf(expected.threshold)):
            continue
        curve = risk_coverage_curve(scores, correct)
        p = binomial_tail(curve.n_errors, curve.n_accepted, alpha)
        ok = (curve.risk <= alpha).nonzero().flatten()
        naive = curve.thresholds[ok[-1]].item() if len(ok) else math.nan
        anywhere = (p <= delta).nonzero().flatten()
        n_min = math.ceil(math.log(delta) / math.log1p(-alpha))
        if got == naive:
            hint = ("that threshold has an *empirical* risk <= alpha; on new data it is above alpha about half "
                    "the time. Test each candidate: p = binomial_tail(errors, accepted, alpha), certified if "
                    "p <= delta")
        elif len(anywhere) and got == curve.thresholds[anywhere[-1]].item():
            hint = ("stop at the first candidate whose p-value is above delta (fixed-sequence testing): going on "
                    "past a failure loses the guarantee")
        elif any(got == curve.thresholds[j].item() and j > 0 and curve.thresholds[j - 1].item() == expected.threshold
                 for j in range(len(curve.thresholds))):
            hint = ("that is the first candidate whose p-value is above delta: return the last one that passed, "
                    "the one before it")
        elif math.isinf(got):
            hint = (f"the first candidates accept too few samples to pass even with no error: start at the first "
                    f"one that accepts at least n_min = ceil(log(delta) / log(1 - alpha)) = {n_min} samples")
        else:
            hint = ("candidates are the distinct scores from the highest down; start at the first that accepts "
                    "n_min samples, keep the last one with p <= delta, stop at the first with p > delta")
        raise AssertionError(f"n={len(scores)}, alpha={alpha}, delta={delta}: got threshold {got:.4f}, expected "
                             f"{expected.threshold:.4f} (coverage {expected.coverage:.3f}). Hint: {hint}.")
    print(f"Correct: the same thresholds as eelib.guaranteed_threshold on all {len(cases)} calibration sets.")


def check_exit_or_reject(exit_or_reject: Callable) -> None:
    """Check ``exit_or_reject(scores, exit_thresholds, reject_thresholds)`` -> ``(exits, rejected)`` for
    max-probability scores ``(E, N)`` against :class:`eelib.rejection.RejectPolicy`'s decisions."""
    from eelib.rejection import RejectPolicy, _route

    with torch.random.fork_rng():
        torch.manual_seed(7)
        scores = torch.rand(4, 60) * 0.9 + 0.1
    exit_t, reject_t = (0.9, 0.8, 0.7), (0.2, 0.3, 0.4, 0.5)
    scores[0, 0], scores[1, 1] = 0.9, 0.3  # scores exactly at a threshold: >= passes
    expected_exits, expected_rej = _route(scores, RejectPolicy("max_prob", exit_t, reject_t))
    got = _call("exit_or_reject", exit_or_reject, scores.clone(), exit_t, reject_t)
    assert isinstance(got, tuple) and len(got) == 2, "return a tuple (exits, rejected)"
    exits = torch.as_tensor(got[0]).long().flatten()
    rejected = torch.as_tensor(got[1]).bool().flatten()
    n = scores.shape[1]
    assert len(exits) == n and len(rejected) == n, f"exits and rejected need one value per sample ({n})"
    if not (torch.equal(exits, expected_exits) and torch.equal(rejected, expected_rej)):
        i = int(((exits != expected_exits) | (rejected != expected_rej)).nonzero()[0])
        want = f"exit {int(expected_exits[i])}, {'rejected' if expected_rej[i] else 'accepted'}"
        have = f"exit {int(exits[i])}, {'rejected' if rejected[i] else 'accepted'}"
        trace = ", ".join(f"{float(s):.3f}" for s in scores[:, i])
        if i in (0, 1):
            hint = ("a score equal to a threshold passes it (>=): exactly at the exit threshold exits, at the "
                    "reject threshold continues")
        elif int(exits[i]) > scores.shape[0] - 1 or (int(expected_exits[i]) == scores.shape[0] - 1 and not rejected[i]
                                                     and expected_rej[i]):
            hint = ("at the final exit a sample cannot continue: accept it if its score >= the last reject "
                    "threshold, else reject it")
        else:
            hint = ("at each early exit k: score >= exit_thresholds[k] -> exit (accepted); else score < "
                    "reject_thresholds[k] -> rejected there; else continue")
        raise AssertionError(f"sample {i} (scores {trace}): got {have}, expected {want}. Hint: {hint}.")
    print(f"Correct: the same exits and rejections as eelib's RejectPolicy for all {n} samples "
          f"({int(expected_rej.sum())} rejected).")


# --- chapters 6-7: early exit in GPT-2 ------------------------------------------------------------

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
    got = torch.as_tensor(got)
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


def check_oracle_exit(oracle_exit: Callable) -> None:
    """Check ``oracle_exit(predictions, final)`` -> ``(T,)`` earliest exit from which every later exit agrees."""
    from eelib.outputs import ExitOutputs
    from eelib.lm.exits import oracle_layers

    with torch.random.fork_rng():
        torch.manual_seed(5)
        final = torch.randint(0, 6, (40,))
        preds = torch.where(torch.rand(4, 40) < torch.tensor([[0.4], [0.6], [0.8], [1.0]]), final, torch.randint(0, 6, (4, 40)))
    preds[-1] = final
    expected = oracle_layers(ExitOutputs(torch.nn.functional.one_hot(preds, 6).float(), final, tuple("abcd")))
    got = torch.as_tensor(_call("oracle_exit", oracle_exit, preds.clone(), final.clone())).long().flatten()
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


def check_threshold_for_agreement(threshold_for_agreement: Callable) -> None:
    """Check ``threshold_for_agreement(scores, agrees, target)`` against :func:`eelib.lm.exits.threshold_for_agreement`."""
    from eelib.lm.exits import threshold_for_agreement as reference

    with torch.random.fork_rng():
        torch.manual_seed(11)
        scores = torch.rand(203)  # 203 tokens: (1 - target) * N is never a whole number, so rounding up is wrong
        agrees = torch.rand(203) < 0.2 + 0.8 * scores  # confident tokens agree more often
    scores[:4] = 0.5  # ties: tokens with equal scores leave together
    for target in (0.95, 0.9, 0.8):
        expected = reference(scores, agrees, target)
        got = _call("threshold_for_agreement", threshold_for_agreement, scores.clone(), agrees.clone(), target)
        assert isinstance(got, (int, float)) or (isinstance(got, torch.Tensor) and got.numel() == 1), (
            f"return one number (the threshold), got {type(got).__name__}")
        got = float(got)
        leave = scores >= got
        agreement = (agrees | ~leave).double().mean().item()
        if agreement < target - 1e-9:
            only_leaving = agrees[leave].float().mean().item() if leave.any() else float("nan")
            raise AssertionError(f"target {target}: with threshold {got:.4f}, {int(leave.sum())} tokens leave early and "
                                 f"the agreement over all tokens is {agreement:.4f} < {target}. Hint: a token agrees "
                                 f"if it leaves and the exit agrees, or if it does not leave (the full model agrees "
                                 f"with itself); tokens with score >= threshold leave (accuracy among leaving tokens "
                                 f"only: {only_leaving:.4f}).")
        if int(leave.sum()) < int((scores >= expected).sum()):
            share = agrees[leave].double().mean().item() if leave.any() else 1.0
            if share >= target - 1e-9:
                hint = ("the target is the agreement over all N tokens, not among the tokens that leave: the others "
                        "go on to the full model and agree, so (1 - target) * N disagreements are allowed in all")
            else:
                hint = ("choose the lowest threshold (the most tokens leaving) whose overall agreement is still >= "
                        "target: try the distinct scores from the highest down and stop before it drops below")
            raise AssertionError(f"target {target}: your threshold {got:.4f} lets {int(leave.sum())} tokens leave; the "
                                 f"lowest threshold that meets the target ({expected:.4f}) lets "
                                 f"{int((scores >= expected).sum())} leave. Hint: {hint}.")
    print("Correct: the lowest threshold that keeps the agreement at the target, for targets 0.95, 0.9 and 0.8.")


def check_accepted_tokens(accepted_tokens: Callable) -> None:
    """Check ``accepted_tokens(drafts, verified)`` against :func:`eelib.lm.speculative.accepted_tokens`."""
    from eelib.lm.speculative import accepted_tokens as reference

    cases = [([1, 2, 3, 4], [1, 9, 3, 4, 5]), ([5, 7, 9], [5, 7, 2, 4]), ([5, 7, 9], [5, 7, 9, 4]),
             ([5, 7, 9], [1, 7, 9, 4]), ([], [8]), ([3, 3, 3], [3, 3, 1, 3])]
    for drafts, verified in cases:
        expected = reference(drafts, verified)
        got = _call("accepted_tokens", accepted_tokens, list(drafts), list(verified))
        got = [int(t) for t in (got.tolist() if isinstance(got, torch.Tensor) else got)]
        if got == expected:
            continue
        if got == expected[:-1]:
            hint = "the round also produces the full model's token after the accepted drafts (the bonus token)"
        elif len(got) > len(expected):
            hint = ("stop at the first draft that differs from the full model's token: the drafts after it were "
                    "conditioned on a wrong token")
        elif got and len(got) <= len(drafts) and got[-1] == drafts[len(got) - 1] and got[-1] != verified[len(got) - 1]:
            hint = "the last token is the full model's (verified), not the rejected draft"
        else:
            hint = "accepted drafts are the longest prefix of drafts equal to verified; then add verified at that position"
        raise AssertionError(f"drafts {drafts}, verified {verified}: expected {expected}, got {got}. Hint: {hint}.")
    print("Correct: the longest agreeing prefix of the drafts, then the full model's token, in every case.")


def check_tokens_per_round(tokens_per_round: Callable) -> None:
    """Check ``tokens_per_round(acceptance, max_draft)`` against :func:`eelib.lm.speculative.expected_tokens_per_round`."""
    from eelib.lm.speculative import expected_tokens_per_round as reference

    for a, k in ((0.0, 4), (0.5, 1), (0.5, 4), (0.8, 8), (1.0, 5), (0.3, 16)):
        expected = reference(a, k)
        got = float(_call("tokens_per_round", tokens_per_round, a, k))
        if abs(got - expected) <= 1e-6 * max(1, expected):
            continue
        if abs(got - (expected - 1)) <= 1e-6 * max(1, expected):
            hint = "count the bonus token: every round produces one token more than it accepts"
        elif abs(got - (1 + a * k)) <= 1e-6 * max(1, expected):
            hint = ("draft i is only used if drafts 1..i-1 were all accepted: it counts with probability a^i, "
                    "not a")
        elif a < 1 and abs(got - 1 / (1 - a)) <= 1e-6 * max(1, expected):
            hint = "the draft is at most max_draft long: sum a^i for i = 0..max_draft only"
        else:
            hint = "a round makes 1 + (number of accepted drafts); draft i is accepted only if all before it are"
        raise AssertionError(f"acceptance {a}, max_draft {k}: expected {expected:.4f} tokens per round, got {got:.4f}. "
                             f"Hint: {hint}.")
    print("Correct: expected tokens per round for every acceptance rate and draft length tried.")
