"""Chapter 1's exercise checks (residual networks): the forward pass of a residual block and
the gradient norm of each layer."""

from __future__ import annotations

import copy
from typing import Callable

import torch

from eelib.course.checks._common import _close as _close_within, _tensor, returned_none, student_check
from eelib.vision.resnet import BasicBlock, ResNet, ResNetConfig
from eelib.vision.train import gradient_norms


def _close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    return _close_within(got, expected, atol=1e-5, rtol=1e-4)


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


@student_check
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
        assert got is not None, returned_none("residual_forward")
        got = _tensor("residual_forward", got, "a tensor (the block's output)")
        assert got.shape == expected.shape, (
            f"For {what}: output shape {tuple(got.shape)}, expected {tuple(expected.shape)}. "
            f"Does the input go through conv1 (which may have stride 2) and conv2?")
        if not _close(got, expected):
            raise AssertionError(f"For {what}: the output differs from block(x) "
                                 f"(max difference {(got - expected).abs().max().item():.3g}). "
                                 f"Hint: {_residual_hint(block, x, got)}.")
    print(f"Correct: residual_forward matches eelib's BasicBlock on all {len(cases)} cases.")


@student_check
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
    assert got is not None, returned_none("layer_gradient_norms")
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
