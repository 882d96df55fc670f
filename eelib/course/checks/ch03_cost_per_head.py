"""Chapter 3's exercise checks (cost per head): a convolution's FLOPs and the cumulative cost of
each exit."""

from __future__ import annotations

from typing import Callable

import torch

from eelib.course.checks._common import _call, _tensor, _tiny_exit_net, student_check


@student_check
def check_conv_flops(conv_flops: Callable[[torch.nn.Conv2d, int, int], int]) -> None:
    """Check ``conv_flops(conv, height, width)`` against ``FlopCounterMode`` on one image."""
    from eelib._util.flops import count_flops

    cases = [(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), 16, 16),
             (torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), 16, 16),
             (torch.nn.Conv2d(16, 32, 1, stride=2, bias=True), 15, 15),
             (torch.nn.Conv2d(4, 6, 5, padding=0, bias=False), 12, 10)]
    for conv, h, w in cases:
        expected = count_flops(conv, torch.zeros(1, conv.in_channels, h, w))
        got = _tensor("conv_flops", _call("conv_flops", conv_flops, conv, h, w), "a number (the FLOPs)")
        assert got.numel() == 1, f"return one number (the FLOPs of one image), got {got.numel()} values"
        got = got.item()
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


@student_check
def check_cumulative_costs(cumulative_costs: Callable[[list, list], list]) -> None:
    """Check ``cumulative_costs(segment_flops, head_flops)`` against :func:`eelib.vision.cost.exit_costs`."""
    from eelib._util.flops import count_flops
    from eelib.vision.cost import exit_costs

    model, x = _tiny_exit_net()
    segments, heads, h = [], [], x[:1]
    for k in range(model.num_exits):
        segments.append(count_flops(model.segment, k, h))
        with torch.no_grad():
            h = model.segment(k, h)
        heads.append(count_flops(model.head, k, h))
    expected = list(exit_costs(model, (1, 12, 12)).flops)
    got = _call("cumulative_costs", cumulative_costs, list(segments), list(heads))
    got = _tensor("cumulative_costs", got, f"a list of {len(expected)} costs (one per exit)").flatten()
    assert len(got) == len(expected), f"return one cost per exit ({len(expected)} values), got {got.tolist()!r}"
    got = [int(g) if float(g).is_integer() else g for g in got.tolist()]
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
    print(f"Correct: cumulative costs of all {len(expected)} exits match eelib.exit_costs.")
