"""The same results on a GPU: routing, policies, calibration, rejection and generation on CUDA against the CPU.

Skipped where there is no CUDA GPU. ``EELIB_DEVICE=cuda python -m pytest`` runs the whole suite,
notebooks included, on the GPU; this module compares the two devices directly.
"""

import pytest
import torch

import eelib
from eelib.lm import model as lmlib
from eelib.outputs import ExitOutputs
from eelib.lm.exits import course_exits
from eelib.lm.generate import early_exit_generate
from eelib.lm.speculative import self_speculative_generate
from eelib.policies import ExitPolicy, apply_policy, calibrate
from eelib._util.flops import count_flops
from eelib.vision.dynamic import route
from eelib.rejection import CostModel, apply_reject_policy, calibrate_reject, guaranteed_threshold, risk_coverage_curve

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@pytest.fixture(scope="module")
def both():
    """The course's early-exit network on the CPU and on the GPU, and test images and outputs for both."""
    cpu = eelib.load_trained("ee_resnet20", device="cpu").model
    gpu = eelib.load_trained("ee_resnet20", device="cuda").model
    data = eelib.load_data("mnist5k")
    images = torch.stack([data.test[i][0] for i in range(256)])
    outputs = eelib.exit_outputs(cpu, data.loaders(256).val, device="cpu")
    return cpu, gpu, images, outputs


def test_routing_on_cuda_matches_the_cpu(both):
    cpu, gpu, images, outputs = both
    costs = eelib.exit_costs(cpu)
    policy = calibrate(outputs, costs, max_accuracy_drop=0.005).policy
    on_cpu = eelib.dynamic_inference(policy, cpu, images)
    on_gpu = eelib.dynamic_inference(policy, gpu, images.cuda())
    assert on_gpu.predictions.device.type == "cuda"
    # GPU kernels round differently: a sample at a threshold may leave one exit apart; almost all agree
    assert (on_gpu.exits.cpu() == on_cpu.exits).float().mean() >= 0.99
    assert (on_gpu.predictions.cpu() == on_cpu.predictions).float().mean() >= 0.99
    speed = eelib.measure_speedup(policy, gpu, images.cuda(), batch_size=64, repeats=2)
    # the ideal speedup against what FlopCounterMode counts while the network and the routing run on the GPU
    batches = images.cuda().split(64)
    full = sum(count_flops(gpu.backbone, b) for b in batches)
    routed = sum(count_flops(route, policy, gpu, b) for b in batches)
    assert full > routed and speed.ideal_speedup == pytest.approx(full / routed)
    leave_first = ExitPolicy("max_prob", (0.1,) * (gpu.num_exits - 1))  # max_prob >= 1/10 always: all leave at exit 0
    first = sum(count_flops(gpu.forward_until, b, 0) for b in batches)
    assert eelib.measure_speedup(leave_first, gpu, images.cuda(), batch_size=64, repeats=1).ideal_speedup == \
        pytest.approx(full / first)


@pytest.mark.parametrize("measure", ["max_prob", "entropy", "margin", "patience"])
def test_policies_and_calibration_on_cuda_match_the_cpu(both, measure):
    _, _, _, outputs = both
    gpu = ExitOutputs(outputs.logits.cuda(), outputs.labels.cuda(), outputs.exit_names)
    costs = [1.0, 2.0, 3.0, 4.0, 5.0]
    cal_cpu = calibrate(outputs, costs, 5.0, measure=measure, max_accuracy_drop=0.01)
    cal_gpu = calibrate(gpu, costs, 5.0, measure=measure, max_accuracy_drop=0.01)
    assert cal_gpu.policy == cal_cpu.policy  # the same logits: the same thresholds
    a, b = apply_policy(cal_cpu.policy, outputs.logits), apply_policy(cal_gpu.policy, gpu.logits)
    assert b.exits.device.type == "cuda" and torch.equal(b.exits.cpu(), a.exits)
    assert torch.equal(b.predictions.cpu(), a.predictions)


def test_rejection_on_cuda_matches_the_cpu(both):
    _, _, _, outputs = both
    gpu = ExitOutputs(outputs.logits.cuda(), outputs.labels.cuda(), outputs.exit_names)
    scores = torch.softmax(outputs.logits[-1], -1).amax(-1)
    correct = outputs.correct[-1]
    curve_cpu, curve_gpu = risk_coverage_curve(scores, correct), risk_coverage_curve(scores.cuda(), correct.cuda())
    assert torch.equal(curve_gpu.n_errors.cpu(), curve_cpu.n_errors) and curve_gpu.aurc == pytest.approx(curve_cpu.aurc)
    g_cpu = guaranteed_threshold(scores, correct, alpha=0.02, delta=0.1)
    g_gpu = guaranteed_threshold(scores.cuda(), correct.cuda(), alpha=0.02, delta=0.1)
    assert g_gpu == g_cpu
    model = CostModel(exit_flops=(1.0, 2.0, 3.0, 4.0, 5.0), full_flops=5.0)
    cal_cpu, cal_gpu = calibrate_reject(outputs, model, flops_budget=3.0), calibrate_reject(gpu, model, flops_budget=3.0)
    assert cal_gpu.policy == cal_cpu.policy
    r_cpu, r_gpu = apply_reject_policy(cal_cpu.policy, outputs.logits), apply_reject_policy(cal_gpu.policy, gpu.logits)
    assert torch.equal(r_gpu.exits.cpu(), r_cpu.exits) and torch.equal(r_gpu.rejected.cpu(), r_cpu.rejected)


def test_generation_on_cuda_matches_the_cpu():
    prompt = "ROMEO:\nWhat"
    policy = ExitPolicy("max_prob", (0.5, 0.5))
    results = {}
    for device in ("cpu", "cuda"):
        ee = course_exits(lmlib.load_lm(lmlib.COURSE_EE_MODEL, device=device), (2, 4))
        results[device] = (early_exit_generate(ee, prompt, policy, max_new_tokens=24).tokens,
                           early_exit_generate(ee, prompt, None, max_new_tokens=24).tokens,
                           self_speculative_generate(ee, prompt, max_new_tokens=24).tokens)
        ids = lmlib.encode(ee.lm, prompt).to(device)[None]
        hf = ee.lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                                  min_new_tokens=24, pad_token_id=ee.lm.tokenizer.eos_token_id)[0, ids.shape[1]:]
        assert results[device][1] == results[device][2] == hf.tolist()  # exact on each device
    assert results["cuda"] == results["cpu"]
