"""The chapter 2-4 exercise checks: they accept eelib's reference and explain the usual mistakes."""

import pytest
import torch
import torch.nn.functional as F

from eelib.course import checks
from eelib.vision.dynamic import route
from eelib.policies import ExitPolicy, entropy


def ref_accuracy(logits, labels):
    return [(z.argmax(1) == labels).float().mean().item() for z in logits]


def ref_conv_flops(conv, h, w):
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    return 2 * conv.out_channels * ((h + 2 * ph - kh) // sh + 1) * ((w + 2 * pw - kw) // sw + 1) * conv.in_channels * kh * kw


def ref_route(model, x, t):
    return route(ExitPolicy("max_prob", (t,) * (model.num_exits - 1)), model, x)


def naive_route(model, x, t):
    """Right answers, but every segment runs on the whole batch."""
    logits = torch.stack(model(x))
    exits = torch.full((len(x),), model.num_exits - 1)
    for k in reversed(range(model.num_exits - 1)):
        exits = torch.where(F.softmax(logits[k], -1).amax(-1) >= t, k, exits)
    return logits.argmax(-1).gather(0, exits[None])[0], exits


@pytest.mark.parametrize("check, answer", [
    (checks.check_accuracy_per_exit, ref_accuracy),
    (checks.check_joint_loss, lambda L, y, w: sum(wi * F.cross_entropy(z, y) for wi, z in zip(w, L))),
    (checks.check_conv_flops, ref_conv_flops),
    (checks.check_cumulative_costs, lambda s, h: [sum(s[:k + 1]) + sum(h[:k + 1]) for k in range(len(s))]),
    (checks.check_entropy, entropy),
    (checks.check_route_batch, ref_route),
])
def test_checks_accept_the_reference(check, answer, capsys):
    check(answer)
    assert capsys.readouterr().out.startswith("Correct")


@pytest.mark.parametrize("check, answer, message", [
    (checks.check_accuracy_per_exit, lambda L, y: [100 * a for a in ref_accuracy(L, y)], "percentages"),
    (checks.check_accuracy_per_exit, lambda L, y: ref_accuracy(L, y)[:-1], "one accuracy per exit"),
    (checks.check_joint_loss, lambda L, y, w: sum(F.cross_entropy(z, y) for z in L), "weights are not applied"),
    (checks.check_joint_loss, lambda L, y, w: sum(wi * F.cross_entropy(z, y) for wi, z in zip(w, L)) / len(L),
     "not a mean"),
    (checks.check_joint_loss, lambda L, y, w: torch.tensor(1.0), "does not require grad"),
    (checks.check_conv_flops, lambda c, h, w: ref_conv_flops(c, h, w) // 2, "2 FLOPs"),
    (checks.check_cumulative_costs, lambda s, h: [sum(s[:k + 1]) for k in range(len(s))], "heads cost something"),
    (checks.check_cumulative_costs, lambda s, h: [sum(s[:k + 1]) + h[k] for k in range(len(s))], "heads 0..k-1"),
    (checks.check_entropy, lambda z: -entropy(z), "sign"),
    (checks.check_entropy, lambda z: entropy(z) / torch.log(torch.tensor(2.0)), "bits"),
    (checks.check_entropy, lambda z: -(F.softmax(z, -1) * F.softmax(z, -1).log()).sum(-1), "nan"),
    (checks.check_route_batch, naive_route, "remove the samples that left"),
    (checks.check_route_batch, lambda m, x, t: (ref_route(m, x, t)[0], torch.zeros(len(x), dtype=torch.long)),
     "left at exit 0"),
    (checks.check_route_batch, lambda m, x, t: ref_route(m, x, t)[::-1], "left at exit"),
])
def test_checks_explain_wrong_answers(check, answer, message):
    with pytest.raises(AssertionError, match=message):
        check(answer)


def test_unfinished_exercises_pass_through():
    def blank(*args):
        raise NotImplementedError("Exercise: implement it")

    with pytest.raises(NotImplementedError):
        checks.check_route_batch(blank)


# --- chapter 8: self-speculative decoding --------------------------------------------------------

def test_speculative_checks_accept_the_reference(capsys):
    from eelib.lm.speculative import accepted_tokens, expected_tokens_per_round

    checks.check_accepted_tokens(accepted_tokens)
    checks.check_tokens_per_round(expected_tokens_per_round)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(line.startswith("Correct") for line in out)


def _prefix_without_bonus(drafts, verified):
    n = 0
    while n < len(drafts) and drafts[n] == verified[n]:
        n += 1
    return drafts[:n]


@pytest.mark.parametrize("check, answer, message", [
    (checks.check_accepted_tokens, _prefix_without_bonus, "bonus token"),
    (checks.check_accepted_tokens, lambda d, v: [x for x, y in zip(d, v) if x == y] + [v[-1]], "stop at the first"),
    (checks.check_accepted_tokens, lambda d, v: _prefix_without_bonus(d, v) + d[len(_prefix_without_bonus(d, v)):][:1]
     if len(_prefix_without_bonus(d, v)) < len(d) else d + [v[-1]], "not the rejected draft"),
    (checks.check_tokens_per_round, lambda a, k: sum(a ** i for i in range(1, k + 1)), "bonus"),
    (checks.check_tokens_per_round, lambda a, k: 1 + a * k, "a\\^i"),
    (checks.check_tokens_per_round, lambda a, k: 1 / (1 - a) if a < 1 else k + 1, "at most max_draft"),
])
def test_speculative_checks_explain_wrong_answers(check, answer, message):
    with pytest.raises(AssertionError, match=message):
        check(answer)
