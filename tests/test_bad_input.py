"""Bad input as a new user types it: each call gets an error naming the argument and what is allowed
(issue 26's list), or behaves as documented. One row per case: the call, the error, words of its message."""

import math

import numpy as np
import pytest
import torch

import eelib
from eelib.lm import model as lmlib
from eelib.lm.confidence import calibrate_gate, state_scores, train_exit_classifiers
from eelib.lm.exits import EarlyExitLM, agreement_by_layer, course_exits, heldout_text, token_exit_outputs
from eelib.outputs import ExitOutputs
from eelib.policies import ExitPolicy, apply_policy, calibrate, candidate_thresholds, tradeoff_curve
from eelib.rejection import (CostModel, RejectPolicy, calibrate_reject, evaluate_reject_policy,
                             guaranteed_threshold)
from eelib.vision import data as data_mod


class Things:
    """What the rows call, built once and only when a row needs it."""

    @property
    def outputs(self):
        gen = torch.Generator().manual_seed(0)
        return ExitOutputs(torch.randn(3, 40, 5, generator=gen) * 3, torch.randint(0, 5, (40,), generator=gen),
                           ("a", "b", "final"))

    @property
    def net(self):
        if "_net" not in self.__dict__:
            self._net = eelib.load_trained("ee_resnet20", device="cpu").model
        return self._net

    @property
    def images(self):
        data = eelib.load_data("mnist5k")
        return torch.stack([data.test[i][0] for i in range(4)])

    @property
    def never(self):
        return ExitPolicy.never_exit(self.net.num_exits)

    @property
    def lm(self):
        if "_lm" not in self.__dict__:
            self._lm = lmlib.load_lm(lmlib.COURSE_MODEL, device="cpu")
        return self._lm

    @property
    def ee(self):
        return course_exits(self.lm, (2, 4))


TEXT = heldout_text("test")[:2000]
COSTS = (1.0, 2.0, 3.0)
POLICY = ExitPolicy("max_prob", (0.5, 0.5))

CASES = {
    # chapter 4: policies and their calibration
    "calibrate max_accuracy_drop as a string": (
        lambda t: calibrate(t.outputs, COSTS, 3.0, max_accuracy_drop="0.01"), TypeError, "max_accuracy_drop must be a number"),
    "calibrate max_accuracy_drop NaN": (
        lambda t: calibrate(t.outputs, COSTS, 3.0, max_accuracy_drop=math.nan), ValueError, r"max_accuracy_drop must be a fraction in \[0, 1\)"),
    "calibrate flops_budget NaN": (
        lambda t: calibrate(t.outputs, COSTS, 3.0, flops_budget=math.nan), ValueError, "flops_budget must be a positive number"),
    "calibrate flops_budget as a string": (
        lambda t: calibrate(t.outputs, COSTS, 3.0, flops_budget="2"), TypeError, "flops_budget must be a number"),
    "calibrate max_candidates=0": (
        lambda t: calibrate(t.outputs, COSTS, 3.0, max_accuracy_drop=0.1, max_candidates=0), ValueError, "max_candidates must be an integer >= 2"),
    "candidate_thresholds max_candidates=1": (
        lambda t: candidate_thresholds(t.outputs, "max_prob", max_candidates=1), ValueError, "max_candidates"),
    "tradeoff_curve max_candidates=0": (
        lambda t: tradeoff_curve(t.outputs, COSTS, 3.0, max_candidates=0), ValueError, "max_candidates"),
    "ExitPolicy thresholds as a string": (
        lambda t: ExitPolicy("max_prob", "0.9"), ValueError, "thresholds must be a sequence with one threshold per early exit"),
    "ExitPolicy thresholds '09' (once read as 0.0 and 9.0)": (
        lambda t: ExitPolicy("max_prob", "09"), ValueError, "thresholds must be a sequence"),
    "ExitPolicy thresholds a 0-d tensor": (
        lambda t: ExitPolicy("max_prob", torch.tensor(0.9)), ValueError, r"single number .* write \(0.9,\)"),
    "ExitPolicy thresholds a number": (
        lambda t: ExitPolicy("max_prob", 0.9), ValueError, "single number"),
    "ExitPolicy a threshold that is a string": (
        lambda t: ExitPolicy("max_prob", ("0.9", 0.9)), TypeError, "thresholds must hold numbers"),
    "RejectPolicy thresholds as a string": (
        lambda t: RejectPolicy("max_prob", "0.9", (0.1, 0.1)), ValueError, "exit_thresholds must be a sequence"),
    "apply_policy with the arguments swapped": (
        lambda t: apply_policy(t.outputs.logits, POLICY), TypeError, r"ExitPolicy first.*apply_policy\(policy, logits\)"),
    "apply_policy on integer logits": (
        lambda t: apply_policy(POLICY, (t.outputs.logits * 10).long()), TypeError, "logits must be floating point"),
    "ExitOutputs labels above the classes": (
        lambda t: ExitOutputs(t.outputs.logits, t.outputs.labels + 5, ("a", "b", "final")), ValueError,
        "labels must be class indices from 0 to 4 .*5 classes.*from 5 to 9"),
    "ExitOutputs negative labels": (
        lambda t: ExitOutputs(t.outputs.logits, t.outputs.labels - 1, ("a", "b", "final")), ValueError, "from -1 to"),
    "ExitOutputs float labels": (
        lambda t: ExitOutputs(t.outputs.logits, t.outputs.labels.float(), ("a", "b", "final")), TypeError, "integer class indices"),
    "ExitOutputs integer logits": (
        lambda t: ExitOutputs(t.outputs.logits.long(), t.outputs.labels, ("a", "b", "final")), TypeError, "floating point"),
    # dynamic inference and its timing
    "dynamic_inference on float64 images": (
        lambda t: eelib.dynamic_inference(t.never, t.net, t.images.double()), TypeError,
        r"x is torch.float64 but the model's weights are torch.float32: pass x.to\(torch.float32\)"),
    "dynamic_inference on half images": (
        lambda t: eelib.dynamic_inference(t.never, t.net, t.images.half()), TypeError, "x is torch.float16"),
    "dynamic_inference on uint8 images": (
        lambda t: eelib.dynamic_inference(t.never, t.net, (t.images * 50 + 100).to(torch.uint8)), TypeError,
        "x is torch.uint8: images must be floating point and normalised"),
    "dynamic_inference on 1x1 images": (
        lambda t: eelib.dynamic_inference(t.never, t.net, t.images[:, :, :1, :1]), ValueError, "at least 4x4 pixels"),
    "measure_speedup on no images": (
        lambda t: eelib.measure_speedup(t.never, t.net, t.images[:0], batch_size=4), ValueError, "images is empty"),
    "load_trained on device 'gpu'": (
        lambda t: eelib.load_trained("ee_resnet20", device="gpu"), ValueError,
        r"device='gpu' is not a device; allowed: cpu, cuda, mps"),
    "load_lm on device 'gpu'": (
        lambda t: lmlib.load_lm(lmlib.COURSE_MODEL, device="gpu"), ValueError, "device='gpu' is not a device"),
    # chapter 5: rejection
    "guaranteed_threshold alpha as a string": (
        lambda t: guaranteed_threshold([0.5, 0.9], [True, True], alpha="0.1", delta=0.1), ValueError, r"alpha must be in \(0, 1\)"),
    "guaranteed_threshold scores as strings": (
        lambda t: guaranteed_threshold(["a", "b"], [True, True], alpha=0.1, delta=0.1), TypeError, "scores must be numbers"),
    "CostModel error_cost NaN": (
        lambda t: CostModel(COSTS, 3.0, error_cost=math.nan), ValueError, "error_cost must be a finite number >= 0"),
    "CostModel reject_cost NaN": (
        lambda t: CostModel(COSTS, 3.0, reject_cost=math.nan), ValueError, "reject_cost must be a finite number"),
    "CostModel compute_cost infinite": (
        lambda t: CostModel(COSTS, 3.0, compute_cost=math.inf), ValueError, "compute_cost must be a finite number"),
    "CostModel full_flops NaN": (
        lambda t: CostModel(COSTS, math.nan), ValueError, "full_flops must be positive finite FLOPs"),
    "CostModel exit_flops with NaN": (
        lambda t: CostModel((1.0, math.nan, 3.0), 3.0), ValueError, "exit_flops and full_flops must be positive finite"),
    "CostModel exit_flops a number": (
        lambda t: CostModel(3.0, 3.0), TypeError, "exit_flops must be a sequence"),
    "CostModel error_cost a string": (
        lambda t: CostModel(COSTS, 3.0, error_cost="1"), TypeError, "error_cost must be a number"),
    "calibrate_reject flops_budget NaN": (
        lambda t: calibrate_reject(t.outputs, CostModel(COSTS, 3.0), flops_budget=math.nan), ValueError,
        r"flops_budget must be a positive number of FLOPs per sample \(None or inf: no budget\), got nan"),
    "calibrate_reject max_candidates=0": (
        lambda t: calibrate_reject(t.outputs, CostModel(COSTS, 3.0), max_candidates=0), ValueError, "max_candidates"),
    "calibrate_reject costs that are no cost description": (
        lambda t: calibrate_reject(t.outputs, COSTS), TypeError,
        "costs must be a CostModel, or a cost description with exit_flops and full_flops.*error_cost="),
    "calibrate_reject a CostModel and prices besides": (
        lambda t: calibrate_reject(t.outputs, CostModel(COSTS, 3.0), error_cost=2.0), ValueError,
        "costs is a CostModel, which has its own prices: leave out error_cost="),
    "evaluate_reject_policy a CostModel and prices besides": (
        lambda t: evaluate_reject_policy(RejectPolicy.exit_only((0.5, 0.5)), t.outputs, CostModel(COSTS, 3.0), reject_cost=0.1),
        ValueError, "own prices"),
    # the language half
    "load_lm(None)": (lambda t: lmlib.load_lm(None), TypeError, "name must be 'course', 'course-ee', a Hugging Face Hub id"),
    "load_lm dtype as a string": (
        lambda t: lmlib.load_lm(lmlib.COURSE_MODEL, dtype="float16"), TypeError,
        r"dtype must be a floating-point torch.dtype \(torch.float32"),
    "load_lm an integer dtype": (lambda t: lmlib.load_lm(lmlib.COURSE_MODEL, dtype=torch.int64), TypeError, "dtype"),
    "course_exits with one layer as a number": (
        lambda t: course_exits(t.lm, 2), TypeError, r"exit_layers must be a sequence of layers from 1 to 7, e.g. \(2,\)"),
    "EarlyExitLM on something else than a language model": (
        lambda t: EarlyExitLM(t.lm.model, (2,)), TypeError, "lm must be a LanguageModel"),
    "token_exit_outputs max_tokens=-5 (once 704 tokens)": (
        lambda t: token_exit_outputs(t.ee, TEXT, max_tokens=-5), ValueError, "max_tokens must be a positive integer, got -5"),
    "token_exit_outputs an integer dtype": (
        lambda t: token_exit_outputs(t.ee, TEXT, max_tokens=20, dtype=torch.int64), TypeError,
        "dtype must be a floating-point torch.dtype for the stored logits"),
    "token_exit_outputs on a language model": (
        lambda t: token_exit_outputs(t.lm, TEXT), TypeError, r"takes an EarlyExitLM first, got LanguageModel.*course_exits\(lm\)"),
    "agreement_by_layer on a language model": (
        lambda t: agreement_by_layer(t.lm, TEXT), TypeError, "agreement_by_layer takes an EarlyExitLM"),
    "agreement_by_layer max_tokens=0": (
        lambda t: agreement_by_layer(t.ee, TEXT, max_tokens=0), ValueError, "max_tokens must be a positive integer or None"),
    "calibrate_gate max_tokens=0": (
        lambda t: calibrate_gate(t.ee, TEXT, "saturation", max_tokens=0), ValueError, "max_tokens must be a positive integer"),
    "calibrate_gate max_candidates=1": (
        lambda t: calibrate_gate(t.ee, TEXT, "saturation", max_tokens=50, max_candidates=1), ValueError, "max_candidates"),
    "calibrate_gate on a language model": (
        lambda t: calibrate_gate(t.lm, TEXT, "saturation"), TypeError, "calibrate_gate takes an EarlyExitLM"),
    "state_scores on a language model": (
        lambda t: state_scores(t.lm, TEXT, "saturation"), TypeError, "state_scores takes an EarlyExitLM"),
    "train_exit_classifiers on a language model": (
        lambda t: train_exit_classifiers(t.lm, TEXT), TypeError, "train_exit_classifiers takes an EarlyExitLM"),
}


@pytest.fixture(scope="module")
def things():
    return Things()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_a_clear_error(things, case):
    call, error, words = CASES[case]
    with pytest.raises(error, match=words):
        call(things)


def test_load_trained_on_cuda_without_a_gpu_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cuda' asks for CUDA, but no CUDA GPU is available here; use 'cpu'"):
        eelib.load_trained("ee_resnet20", device="cuda")


def test_numpy_fractions_are_numbers_and_list_scores_are_not_rounded():
    """``alpha=np.float32(0.1)`` is taken as the number it is; a list of Python floats is read in float64
    (it was rounded to float32 first: two scores 1e-9 apart became one threshold, 0.10000000149)."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.5, 1.0, 400)
    correct = rng.uniform(size=400) < 0.95
    as_numpy = guaranteed_threshold(scores, correct, alpha=np.float32(0.1), delta=np.float64(0.1))
    assert as_numpy == guaranteed_threshold(scores, correct, alpha=float(np.float32(0.1)), delta=0.1)
    tensor_alpha = guaranteed_threshold(scores, correct, alpha=torch.tensor(0.1, dtype=torch.float64), delta=0.1)
    assert tensor_alpha.alpha == 0.1
    listed = [0.1 + 1e-9] * 100 + [0.1] * 100 + [0.05] * 10  # every sample right: all 200 at or above 0.1 pass
    result = guaranteed_threshold(listed, [True] * 210, alpha=0.05, delta=0.1)
    assert result.threshold == 0.05 and result.n_accepted == 210  # every distinct score kept its own value
    result = guaranteed_threshold(listed, [True] * 200 + [False] * 10, alpha=0.02, delta=0.1)
    assert result.threshold == 0.1 and result.n_accepted == 200


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_failed_download_leaves_nothing_behind_not_even_a_lock(tmp_path, monkeypatch, name):
    nowhere = (tmp_path / "nowhere").as_uri()
    if name == "mnist":
        monkeypatch.setitem(data_mod.SOURCES, "mnist", {**data_mod.SOURCES["mnist"], "mirrors": [nowhere + "/"]})
    else:
        monkeypatch.setitem(data_mod.SOURCES, "cifar10", {**data_mod.SOURCES["cifar10"], "url": nowhere + "/c.tar.gz"})
    cache = tmp_path / "cache"
    with pytest.raises(eelib.DownloadError, match="could not be downloaded"):
        eelib.load_data(name, root=cache)
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) == []
