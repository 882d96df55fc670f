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

    def reference_speed(a, k, L, N, block_us, draft_us, final_us, over_us):
        from eelib.lm.speed import speculative_round_cost

        us = speculative_round_cost(block_us.__getitem__, draft_us, final_us.__getitem__, n_layers=N, draft_layer=L,
                                    drafts=k, round_overhead=over_us)
        return expected_tokens_per_round(a, k) / (us * 1e-6)

    checks.check_round_speed(reference_speed)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(line.startswith("Correct") for line in out)


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


# --- every hint of every check, reached by a planted answer ------------------------------------
#
# Each row plants one wrong (or half-finished) answer and names the message it must get. The table
# covers every chapter; test_every_hint_is_reached reads the checks' source and fails when a hint,
# an assertion message or an error message of a check is reached by no row.

import ast  # noqa: E402
import copy  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import eelib  # noqa: E402
from eelib.lm.exits import oracle_token_exits, threshold_for_agreement  # noqa: E402
from eelib.lm.speculative import accepted_tokens, expected_tokens_per_round  # noqa: E402
from eelib.rejection import binomial_tail, guaranteed_threshold, risk_coverage_curve  # noqa: E402


def _forward(b, x, *, skip=True, relu_last=True, add_x=False, mid_relu=True, shortcut_or_x=False):
    h = b.bn1(b.conv1(x))
    out = b.bn2(b.conv2(F.relu(h) if mid_relu else h))
    if skip and (b.shortcut is not None or shortcut_or_x):
        out = out + (x if add_x or b.shortcut is None else b.shortcut(x))
    return F.relu(out) if relu_last else out


def _conv_bn(conv, bn, x):  # one convolution and batch norm (eval) in float64, from the module's weights
    x = F.conv2d(x, conv.weight.double(), None, conv.stride, conv.padding)
    return F.batch_norm(x, bn.running_mean.double(), bn.running_var.double(), bn.weight.double(),
                        bn.bias.double(), False, 0.0, bn.eps)


def _forward_float64(b, x):
    x = x.double()
    out = _conv_bn(b.conv2, b.bn2, F.relu(_conv_bn(b.conv1, b.bn1, x)))
    if isinstance(b.shortcut, torch.nn.Sequential):
        out = out + _conv_bn(b.shortcut[0], b.shortcut[1], x)
    elif b.shortcut is not None:
        out = out + x
    return F.relu(out)


def _raises(error):
    def answer(*args):
        raise error

    return answer


def _hookless_route(model, x, t):
    """Right answers computed with the check's forward hooks taken off: the segments seem never to run."""
    saved = [(m, dict(m._forward_pre_hooks)) for m in model.modules()]
    for m, _ in saved:
        m._forward_pre_hooks.clear()
    try:
        return ref_route(model, x, t)
    finally:
        for m, hooks in saved:
            m._forward_pre_hooks.update(hooks)


def _norms_of(model, x, y, grads_of):
    names = list(eelib.gradient_norms(copy.deepcopy(model), x, y))
    params = dict(model.named_parameters())
    return {n: g.norm().item() for n, g in zip(names, grads_of([params[n] for n in names]))}


def _no_train_mode(model, x, y):  # forgets model.train(): batch norm uses its running statistics
    return _norms_of(model, x, y, lambda weights: torch.autograd.grad(F.cross_entropy(model(x), y), weights))


def _takes_a_step(model, x, y):
    norms = eelib.gradient_norms(model, x, y)
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.1 * p.grad)
    return norms


def _under_no_grad(model, x, y):
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y)
    loss.backward()


def ref_risk_coverage(scores, correct):
    c = risk_coverage_curve(scores, correct)
    return c.coverage, c.risk


def _risk_coverage(scores, correct, *, descending=True, over_all=False, accuracy=False, shift=0, scale=1.0):
    order = torch.argsort(scores, descending=descending)
    wrong = (~correct[order]).double().cumsum(0)
    k = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    risk = wrong / (len(scores) if over_all else k)
    return (k - shift) / len(scores), scale * (1 - risk if accuracy else risk)


def _choose(scores, correct, alpha, delta, *, naive=False, no_stop=False, no_start=False, first_failure=False):
    curve = risk_coverage_curve(scores, correct)
    if naive:
        return float(curve.thresholds[(curve.risk <= alpha).nonzero().flatten()[-1]])
    p = binomial_tail(curve.n_errors, curve.n_accepted, alpha)
    n_min = 1 if no_start else math.ceil(math.log(delta) / math.log(1 - alpha))
    chosen = math.inf
    for j in range(len(p)):
        if curve.n_accepted[j] < n_min:
            continue
        if p[j] > delta:
            if no_stop:
                continue
            if first_failure:
                chosen = float(curve.thresholds[j])
            break
        chosen = float(curve.thresholds[j])
    return chosen


def _exit_or_reject(scores, exit_t, reject_t, *, strict=False, final_continues=False):
    from eelib.rejection import RejectPolicy, decide_all

    if not (strict or final_continues):
        return decide_all(RejectPolicy("max_prob", exit_t, reject_t), scores)
    n, last = scores.shape[1], scores.shape[0] - 1
    exits, rejected = torch.full((n,), last), torch.zeros(n, dtype=torch.bool)
    done = torch.zeros(n, dtype=torch.bool)
    for k in range(last + 1):
        s = scores[k]
        if k < last:
            leave = (s > exit_t[k]) if strict else (s >= exit_t[k])
            rej = ~leave & ((s <= reject_t[k]) if strict else (s < reject_t[k]))
        else:
            leave = torch.ones(n, dtype=torch.bool) if final_continues else s >= reject_t[k]
            rej = ~leave
        new = ~done & (leave | rej)
        exits[new], rejected[new] = k, rej[new]
        done |= new
    return exits, rejected


def _wrong_exit_after_the_ties(scores, exit_t, reject_t):
    exits, rejected = _exit_or_reject(scores, exit_t, reject_t)
    exits = exits.clone()
    exits[2:] = (exits[2:] + 1) % scores.shape[0]
    return exits, rejected


def ref_layer_predictions(model, hs):
    tf = model.transformer
    return torch.stack([model.lm_head(tf.ln_f(h)) for h in hs[1:-1]] + [model.lm_head(hs[-1])])[:, 0].argmax(-1)


def _lens(model, hs, *, layers=slice(1, None), ln_last=False, ln=True):
    tf, states = model.transformer, hs[layers]
    rows = [model.lm_head(tf.ln_f(h) if ln else h) for h in states[:-1]]
    rows.append(model.lm_head(tf.ln_f(states[-1]) if ln_last else states[-1]))
    return torch.stack(rows)[:, 0].argmax(-1)


def ref_oracle_exit(preds, final):
    from eelib.outputs import ExitOutputs

    return oracle_token_exits(ExitOutputs(F.one_hot(preds, int(preds.max()) + 1).float(), final,
                                          tuple(str(i) for i in range(len(preds)))))


def _share_of_leaving(scores, agrees, target):
    for t in sorted(set(scores.tolist())):
        if agrees[scores >= t].float().mean() >= target:
            return t
    return float("inf")


def _prefix_with_bonus(drafts, verified):
    return _prefix_without_bonus(drafts, verified) + [verified[len(_prefix_without_bonus(drafts, verified))]]


_ref_cum = lambda s, h: [sum(s[:k + 1]) + sum(h[:k + 1]) for k in range(len(s))]  # noqa: E731
_ref_loss = lambda L, y, w: sum(wi * F.cross_entropy(z, y) for wi, z in zip(w, L))  # noqa: E731
_none = lambda *args: None  # noqa: E731 (a function that forgot its return)
_c = checks

PLANTED = [  # (check, planted answer, the message it must get)
    # chapter 1: residual_forward
    (_c.check_residual_forward, lambda b, x: b(x), r"called block\(x\)"),
    (_c.check_residual_forward, lambda b, x: _forward(b, x, skip=False), "skip connection is missing"),
    (_c.check_residual_forward, lambda b, x: _forward(b, x, relu_last=False), "final relu is missing"),
    (_c.check_residual_forward, lambda b, x: _forward(b, x, add_x=True), r"raised RuntimeError.*add block.shortcut"),
    (_c.check_residual_forward, _raises(ValueError("oops")), "raised ValueError: oops.*formula above"),
    (_c.check_residual_forward, lambda b, x: F.relu(_forward(b, x, skip=False)) + (0 if b.shortcut is None else b.shortcut(x)),
     "after adding the shortcut"),
    (_c.check_residual_forward, lambda b, x: _forward(b, x, shortcut_or_x=True), "this is a plain block"),
    (_c.check_residual_forward, lambda b, x: _forward(b, x, mid_relu=False), "relu between bn1 and conv2"),
    (_c.check_residual_forward, lambda b, x: 2 * _forward(b, x), "compare step by step with the formula: conv1"),
    (_c.check_residual_forward, lambda b, x: _forward(b, x)[..., :-1], "output shape"),
    (_c.check_residual_forward, lambda b, x: "out", "returned str; expected a tensor"),
    (_c.check_residual_forward, _none, "residual_forward: your function returned None"),
    # chapter 1: gradient norms
    (_c.check_gradient_norms, lambda m, x, y: {**eelib.gradient_norms(m, x, y), "stem.1.weight": 1.0},
     r"unexpected \['stem.1.weight'\]"),
    (_c.check_gradient_norms, _under_no_grad, "inside torch.no_grad"),
    (_c.check_gradient_norms, _raises(ValueError("oops")), "raised ValueError: oops. Hint: read the error above"),
    (_c.check_gradient_norms, _takes_a_step, "must not update the weights"),
    (_c.check_gradient_norms, lambda m, x, y: [1.0], "return a dict"),
    (_c.check_gradient_norms, lambda m, x, y: dict(reversed(eelib.gradient_norms(m, x, y).items())), "in the order"),
    (_c.check_gradient_norms, _no_train_mode, "computed in train"),
    (_c.check_gradient_norms, _none, "layer_gradient_norms: your function returned None"),
    (_c.check_gradient_norms, lambda m, x, y: {n: "big" for n in eelib.gradient_norms(copy.deepcopy(m), x, y)},
     "check_gradient_norms could not compare your answer"),
    # chapter 2
    (_c.check_accuracy_per_exit, lambda L, y: [100 * a for a in ref_accuracy(L, y)], "percentages"),
    (_c.check_accuracy_per_exit, lambda L, y: ref_accuracy(L, y)[:-1], "one accuracy per exit"),
    (_c.check_accuracy_per_exit, lambda L, y: [(z.argmax(0)[:len(y)] == y[:z.shape[1]]).float().mean() for z in L],
     r"argmax over the classes \(dim=1\)"),
    (_c.check_accuracy_per_exit, lambda L, y: [a / 2 for a in ref_accuracy(L, y)], r"logits\[k\].argmax\(dim=1\)"),
    (_c.check_accuracy_per_exit, lambda L, y: [torch.tensor(0.5), torch.tensor([0.5, 0.5])], "of different shapes"),
    (_c.check_accuracy_per_exit, lambda L, y: "high", "returned str; expected a list of 4 accuracies"),
    (_c.check_accuracy_per_exit, _none, "returned None"),
    (_c.check_joint_loss, lambda L, y, w: sum(F.cross_entropy(z, y) for z in L), "weights are not applied"),
    (_c.check_joint_loss, lambda L, y, w: _ref_loss(L, y, w) / len(L), "not a mean"),
    (_c.check_joint_loss, lambda L, y, w: w[-1] * F.cross_entropy(L[-1], y), "only the final exit's loss"),
    (_c.check_joint_loss, lambda L, y, w: 2 * _ref_loss(L, y, w), "times its weight, summed"),
    (_c.check_joint_loss, lambda L, y, w: torch.tensor(1.0), "does not require grad"),
    (_c.check_joint_loss, lambda L, y, w: torch.stack([F.cross_entropy(z, y) for z in L]), "as a scalar tensor"),
    (_c.check_joint_loss, _none, "returned None"),
    # chapter 3
    (_c.check_conv_flops, lambda c, h, w: ref_conv_flops(c, h, w) // 2, "2 FLOPs"),
    (_c.check_conv_flops, lambda c, h, w: 2 * c.out_channels * h * w * c.in_channels * math.prod(c.kernel_size),
     "the output is smaller than the input"),
    (_c.check_conv_flops, lambda c, h, w: ref_conv_flops(c, h, w) + 1, "does not count the bias"),
    (_c.check_conv_flops, lambda c, h, w: [1, 2], "return one number"),
    (_c.check_conv_flops, _none, "returned None"),
    (_c.check_cumulative_costs, lambda s, h: [sum(s[:k + 1]) for k in range(len(s))], "heads cost something"),
    (_c.check_cumulative_costs, lambda s, h: [sum(s[:k + 1]) + h[k] for k in range(len(s))], "heads 0..k-1"),
    (_c.check_cumulative_costs, lambda s, h: [c + 1 for c in _ref_cum(s, h)], "cumulative sums"),
    (_c.check_cumulative_costs, lambda s, h: _ref_cum(s, h)[:-1], "return one cost per exit"),
    (_c.check_cumulative_costs, _none, "returned None"),
    # chapter 4
    (_c.check_entropy, lambda z: -(F.softmax(z, -1) * F.log_softmax(z, -1)).sum(0), r"not over the samples \(dim=0\)"),
    (_c.check_entropy, lambda z: entropy(z)[:5], r"return a tensor of shape \(32,\)"),
    (_c.check_entropy, lambda z: -(F.softmax(z, -1) * F.softmax(z, -1).log()).sum(-1), "nan"),
    (_c.check_entropy, lambda z: -entropy(z), "sign"),
    (_c.check_entropy, lambda z: entropy(z) / math.log(2), "bits"),
    (_c.check_entropy, lambda z: entropy(z) + 0.1, r"by up to 0.1000 nats. Hint: p = softmax"),
    (_c.check_entropy, _raises(IndexError("dim 2")), "entropy_measure raised IndexError"),
    (_c.check_entropy, _none, "returned None"),
    (_c.check_route_batch, naive_route, "remove the samples that left"),
    (_c.check_route_batch, lambda m, x, t: (ref_route(m, x, t)[0], torch.zeros(len(x), dtype=torch.long)),
     "left at exit 0"),
    (_c.check_route_batch, lambda m, x, t: (ref_route(m, x, t)[0].flip(0), ref_route(m, x, t)[1]),
     "original index"),
    (_c.check_route_batch, lambda m, x, t: ref_route(m, x, t)[0], r"return a tuple \(predictions, exits\)"),
    (_c.check_route_batch, lambda m, x, t: (ref_route(m, x, t)[0][:-1], ref_route(m, x, t)[1]),
     "predictions must have shape"),
    (_c.check_route_batch, lambda m, x, t: (ref_route(m, x, t)[0], ref_route(m, x, t)[1][:-1]), "exits must have shape"),
    (_c.check_route_batch, _hookless_route, "segment 1 never ran"),
    (_c.check_route_batch, _none, "returned None"),
    # chapter 5
    (_c.check_risk_coverage, lambda s, c: _risk_coverage(s, c, over_all=True), r"\*all\* samples"),
    (_c.check_risk_coverage, lambda s, c: _risk_coverage(s, c, accuracy=True), "accuracy of the accepted"),
    (_c.check_risk_coverage, lambda s, c: _risk_coverage(s, c, descending=False), "descending order"),
    (_c.check_risk_coverage, lambda s, c: _risk_coverage(s, c, scale=0.5), "most confident first; risk"),
    (_c.check_risk_coverage, lambda s, c: (100 * ref_risk_coverage(s, c)[0], ref_risk_coverage(s, c)[1]), "percent"),
    (_c.check_risk_coverage, lambda s, c: _risk_coverage(s, c, shift=1), "the k most confident samples"),
    (_c.check_risk_coverage, lambda s, c: ref_risk_coverage(s, c)[1], r"return a tuple \(coverage, risk\)"),
    (_c.check_risk_coverage, lambda s, c: (ref_risk_coverage(s, c)[0][:-1], ref_risk_coverage(s, c)[1]),
     "coverage has 39 values, expected 40"),
    (_c.check_risk_coverage, lambda s, c: ("all", ref_risk_coverage(s, c)[1]), r"coverage returned str"),
    (_c.check_risk_coverage, _none, "returned None"),
    (_c.check_guaranteed_threshold, lambda *a: _choose(*a, naive=True), "empirical"),
    (_c.check_guaranteed_threshold, lambda *a: _choose(*a, no_stop=True), "going on past a failure"),
    (_c.check_guaranteed_threshold, lambda *a: _choose(*a, no_start=True), "accept too few samples"),
    (_c.check_guaranteed_threshold, lambda *a: _choose(*a, first_failure=True), "return the last one that passed"),
    (_c.check_guaranteed_threshold, lambda *a: 0.5, "candidates are the distinct scores from the highest down"),
    (_c.check_guaranteed_threshold, lambda *a: [0.5, 0.6], r"return one threshold \(a float\), got 2 values"),
    (_c.check_guaranteed_threshold, _none, "returned None"),
    (_c.check_exit_or_reject, lambda *a: _exit_or_reject(*a, strict=True), "passes it"),
    (_c.check_exit_or_reject, lambda *a: _exit_or_reject(*a, final_continues=True), "final exit a sample cannot continue"),
    (_c.check_exit_or_reject, _wrong_exit_after_the_ties, "at each early exit k"),
    (_c.check_exit_or_reject, lambda s, e, r: (torch.zeros(3), torch.zeros(3)), "one value per sample"),
    (_c.check_exit_or_reject, lambda s, e, r: _exit_or_reject(s, e, r)[0], r"return a tuple \(exits, rejected\)"),
    (_c.check_exit_or_reject, _none, "returned None"),
    # chapter 6
    (_c.check_layer_predictions, lambda m, hs: _lens(m, hs, ln_last=True), "already has ln_f applied"),
    (_c.check_layer_predictions, lambda m, hs: _lens(m, hs, ln=False), "apply the final layer norm"),
    (_c.check_layer_predictions, lambda m, hs: torch.stack([m.lm_head(m.transformer.ln_f(h)) for h in hs[:-2]]
                                                           + [m.lm_head(hs[-1])])[:, 0].argmax(-1),
     r"the exit after layer l is"),
    (_c.check_layer_predictions, lambda m, hs: _lens(m, hs, layers=slice(0, None)), "got 5 rows for 4 layers"),
    (_c.check_layer_predictions, lambda m, hs: torch.zeros(4, 12, dtype=torch.long), "for layer l = 1..n-1"),
    (_c.check_layer_predictions, lambda m, hs: ref_layer_predictions(m, hs)[:, :-1], r"return a \(n_layers, T\)"),
    (_c.check_layer_predictions, _none, "returned None"),
    (_c.check_oracle_exit, lambda p, f: (p == f).float().argmax(0), "every later exit must agree too"),
    (_c.check_oracle_exit, lambda p, f: ref_oracle_exit(p, f) + 1, "off by one"),
    (_c.check_oracle_exit, lambda p, f: torch.zeros(p.shape[1], dtype=torch.long), "the answer is"),
    (_c.check_oracle_exit, lambda p, f: ref_oracle_exit(p, f)[:-1], "one exit index per token"),
    (_c.check_oracle_exit, _none, "returned None"),
    # chapter 7
    (_c.check_threshold_for_agreement, _share_of_leaving, "not among the tokens that leave"),
    (_c.check_threshold_for_agreement, lambda s, a, t: threshold_for_agreement(s, a, t) - 0.2,
     "agreement over all tokens is"),
    (_c.check_threshold_for_agreement, lambda s, a, t: float(s[s > threshold_for_agreement(s, a, t)].min()),
     "choose the lowest threshold"),
    (_c.check_threshold_for_agreement, lambda s, a, t: (s, a), r"return one number \(the threshold\)"),
    (_c.check_threshold_for_agreement, _none, "returned None"),
    # chapter 8
    (_c.check_accepted_tokens, _prefix_without_bonus, "bonus token"),
    (_c.check_accepted_tokens, lambda d, v: [x for x, y in zip(d, v) if x == y] + [v[-1]], "stop at the first"),
    (_c.check_accepted_tokens, lambda d, v: _prefix_without_bonus(d, v) + d[len(_prefix_without_bonus(d, v)):][:1]
     if len(_prefix_without_bonus(d, v)) < len(d) else d + [v[-1]], "not the rejected draft"),
    (_c.check_accepted_tokens, lambda d, v: [0], "longest prefix of drafts equal to verified"),
    (_c.check_accepted_tokens, _none, "accepted_tokens: your function returned None"),
    (_c.check_tokens_per_round, lambda a, k: sum(a ** i for i in range(1, k + 1)), "count the bonus token"),
    (_c.check_tokens_per_round, lambda a, k: 1 + a * k, r"a\^i"),
    (_c.check_tokens_per_round, lambda a, k: 1 / (1 - a) if a < 1 else k + 1, "at most max_draft"),
    (_c.check_tokens_per_round, lambda a, k: 42.0, r"a round makes 1 \+"),
    (_c.check_tokens_per_round, lambda a, k: [1.0, 2.0], r"return one number \(the expected tokens per round\)"),
    (_c.check_tokens_per_round, _none, "tokens_per_round: your function returned None"),
    (_c.check_round_speed, lambda a, k, L, N, b, d, f, o: 1e6 * (sum(a ** i for i in range(1, k + 1))) / _round_us(
        k, L, N, b, d, f, o), "the full model's token after the accepted drafts"),
    (_c.check_round_speed, lambda a, k, L, N, b, d, f, o: _round_speed(a, k, L, N, b, d, f, o) / 1e6, "microseconds"),
    (_c.check_round_speed, lambda a, k, L, N, b, d, f, o: _round_speed(a, k, L, N, {r: b[1] for r in b}, d,
                                                                        {r: f[1] for r in f}, o), "k \\+ 1 rows"),
    (_c.check_round_speed, lambda a, k, L, N, b, d, f, o: 1e6 / _round_us(k, L, N, b, d, f, o), "not one token"),
    (_c.check_round_speed, lambda a, k, L, N, b, d, f, o: 1.0, "a round: \\(k \\+ 1\\) positions"),
    (_c.check_round_speed, lambda *args: [1.0, 2.0], r"return one number \(the predicted tokens per second\)"),
    (_c.check_round_speed, _none, "tokens_per_second: your function returned None"),
    # chapter 9
    (_c.check_consistency_threshold, lambda s, a, e, d: float(s.min()), "is above delta"),
    (_c.check_consistency_threshold, lambda s, a, e, d: _consistency(s, a, e, d) - 1e-7, "lower threshold than"),
    (_c.check_consistency_threshold, lambda s, a, e, d: 0.999, "too strict"),
    (_c.check_consistency_threshold, lambda *args: [0.5, 0.6], r"return one number \(the threshold\)"),
    (_c.check_consistency_threshold, _none, "consistency_threshold: your function returned None"),
]


def _round_us(k, L, N, block_us, draft_us, final_us, over_us):
    return (k + 1) * L * block_us[1] + k * draft_us + (N - L) * block_us[k + 1] + final_us[k + 1] + over_us


def _round_speed(a, k, L, N, block_us, draft_us, final_us, over_us):
    return 1e6 * sum(a ** i for i in range(k + 1)) / _round_us(k, L, N, block_us, draft_us, final_us, over_us)


def _consistency(scores, agrees, epsilon, delta):
    """The guaranteed threshold (the check's reference): a planted answer just below it certifies the same tokens
    but is not the fixed sequence's answer."""
    from eelib.course.checks.ch09_llm_rejection import _reference

    return _reference(scores, agrees, epsilon, delta)


@pytest.fixture(scope="module")
def planted_messages():
    """The message each planted answer gets (None if the check passed it; 'CRASH ...' if the check crashed)."""
    messages = []
    for check, answer, _ in PLANTED:
        try:
            check(answer)
            messages.append(None)
        except AssertionError as err:
            messages.append(str(err))
        except Exception as err:  # a crash from inside the check: what a student must never see
            messages.append(f"CRASH {type(err).__name__}: {err}")
    return messages


@pytest.mark.parametrize("row", range(len(PLANTED)), ids=lambda i: f"{PLANTED[i][0].__name__}-{i}")
def test_every_planted_answer_gets_its_hint(row, planted_messages):
    import re

    check, _, pattern = PLANTED[row]
    message = planted_messages[row]
    assert message is not None, f"{check.__name__} passed a wrong answer (row {row})"
    assert not message.startswith("CRASH"), f"{check.__name__} crashed instead of explaining: {message}"
    assert re.search(pattern, message), f"{check.__name__}: {pattern!r} not in {message!r}"


def _message_fragments(path: Path) -> list[str]:
    """The longest literal piece of every hint, assertion message and AssertionError of a check module."""
    def pieces(node) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.JoinedStr):
            return [v.value for v in node.values if isinstance(v, ast.Constant)]
        if isinstance(node, ast.IfExp):
            return []  # each branch is collected on its own (below)
        if isinstance(node, ast.BinOp):
            return pieces(node.left) + pieces(node.right)
        return []

    messages = []
    for func in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(func, ast.FunctionDef):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Assert) and node.msg is not None:
                messages.append(node.msg)
            elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                    getattr(node.exc.func, "id", None) == "AssertionError" and node.exc.args:
                messages.append(node.exc.args[0])
            elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "hint" for t in node.targets):
                messages.append(node.value)
            elif isinstance(node, ast.Return) and (func.name.endswith("_hint") or func.name == "returned_none"):
                messages.append(node.value)
    for node in list(messages):
        if isinstance(node, ast.IfExp):
            messages += [node.body, node.orelse]
    fragments = []
    for node in messages:
        longest = max(pieces(node), key=len, default="").strip()
        if len(longest) >= 12:  # a message built entirely from variables (e.g. returned_none(...)) has none
            fragments.append(longest)
    return fragments


def test_every_hint_is_reached(planted_messages):
    folder = Path(checks.__file__).parent
    reached = [m for m in planted_messages if m and not m.startswith("CRASH")]
    missing = {}
    for path in sorted(folder.glob("*.py")):
        for fragment in _message_fragments(path):
            if not any(fragment in m for m in reached):
                missing.setdefault(path.name, []).append(fragment)
    assert not missing, f"hints that no planted answer reaches: {missing}"


# --- a right answer in any float dtype, on any device, is accepted ---------------------------------

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _on(device, fn):
    """The answer ``fn`` with its result moved to ``device`` (tensors, and tensors inside tuples and lists)."""
    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, (tuple, list)):
            return type(value)(move(v) for v in value)
        return value

    return lambda *args: move(fn(*args))


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("check, answer", [
    (checks.check_residual_forward, _forward_float64),
    (checks.check_accuracy_per_exit, lambda L, y: torch.tensor(ref_accuracy(L, y), dtype=torch.float64)),
    (checks.check_accuracy_per_exit, lambda L, y: [(z.argmax(1) == y).half().mean() for z in L]),
    (checks.check_joint_loss, lambda L, y, w: sum(wi * F.cross_entropy(z.double(), y) for wi, z in zip(w, L))),
    (checks.check_conv_flops, lambda c, h, w: torch.tensor(float(ref_conv_flops(c, h, w)), dtype=torch.float64)),
    (checks.check_cumulative_costs, lambda s, h: torch.tensor(_ref_cum(s, h), dtype=torch.float64)),
    (checks.check_entropy, lambda z: -(F.softmax(z.double(), -1) * F.log_softmax(z.double(), -1)).sum(-1)),
    (checks.check_entropy, lambda z: -(F.softmax(z.half(), -1) * F.log_softmax(z.half(), -1)).sum(-1)),
    (checks.check_entropy, lambda z: -(F.softmax(z.bfloat16(), -1) * F.log_softmax(z.bfloat16(), -1)).sum(-1)),
    (checks.check_route_batch, lambda m, x, t: tuple(r.int() for r in ref_route(m, x, t))),
    (checks.check_risk_coverage, lambda s, c: tuple(v.float() for v in ref_risk_coverage(s, c))),
    (checks.check_risk_coverage, lambda s, c: tuple(v.half() for v in ref_risk_coverage(s, c))),
    (checks.check_guaranteed_threshold,
     lambda s, c, a, d: torch.tensor(guaranteed_threshold(s, c, alpha=a, delta=d).threshold, dtype=torch.float32)),
    (checks.check_exit_or_reject, lambda *a: tuple(v.int() for v in _exit_or_reject(*a))),
    (checks.check_layer_predictions, lambda m, hs: list(ref_layer_predictions(m, hs))),
    (checks.check_oracle_exit, lambda p, f: ref_oracle_exit(p, f).int()),
    (checks.check_threshold_for_agreement, lambda s, a, t: torch.tensor(threshold_for_agreement(s, a, t))),
    (checks.check_accepted_tokens, lambda d, v: torch.tensor(_prefix_with_bonus(d, v))),
    (checks.check_tokens_per_round, lambda a, k: torch.tensor(expected_tokens_per_round(a, k), dtype=torch.float64)),
])
def test_checks_accept_a_right_answer_in_any_dtype_and_on_any_device(check, answer, device, capsys):
    check(_on(device, answer))
    assert capsys.readouterr().out.startswith("Correct")


def test_checks_accept_the_references_of_every_chapter(capsys):
    checks.check_residual_forward(_forward)
    checks.check_gradient_norms(eelib.gradient_norms)
    checks.check_risk_coverage(ref_risk_coverage)
    checks.check_guaranteed_threshold(_choose)
    checks.check_exit_or_reject(_exit_or_reject)
    checks.check_layer_predictions(ref_layer_predictions)
    checks.check_oracle_exit(ref_oracle_exit)
    checks.check_threshold_for_agreement(threshold_for_agreement)
    checks.check_accepted_tokens(_prefix_with_bonus)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 9 and all(line.startswith("Correct") for line in out), out
