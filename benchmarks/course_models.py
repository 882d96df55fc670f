"""The figures of the shipped course models that the README's chapter 1, 2, 4, 5 and 6 tables and text show.

Everything here is computed from the models shipped with eelib (``eelib/models/zoo/`` and the
course language model), with the same calls as the lecture notebooks, so a fresh clone prints
the same figures as the README (tested: ``tests/test_readme_results.py``):

* ``chapter1``: the degradation experiment (``plain20``, ``plain56``, ``resnet56``): parameters,
  last-epoch training loss and training time (from the shipped file's metadata), test accuracy
  (evaluated here), the gradient norm of the first layer over the last convolution at
  initialisation on one training batch of 64 (seed 0, as in notebook 01).
* ``chapter2``: accuracy of every exit on the test split for ``ee_resnet20`` (joint training)
  and for ``resnet20`` with heads trained for 3 epochs on its frozen backbone (as in notebook 02,
  trained here under :func:`eelib.reproducible_training`, so every machine gets the same heads),
  and each exit's cost as a share of the network without exits.
* ``chapter4``: max probability, entropy, margin and patience calibrated on the validation split
  for at most 0.5 pp accuracy drop (one shared threshold), measured on the test split; the oracle
  and the final exit alone (as in notebook 04).
* ``chapter5``: early exit with a reject option on the notebook's one split (calibrated on the
  validation split, measured on the test split): combined, exit-only (budget 40% of the FLOPs) and
  reject-only policies, an error costing 1 and a rejection 0.1 (as in notebook 05).
* ``chapter6``: each layer's agreement with the full course GPT-2 on 2,000 tokens of the
  calibration half, for the logit lens and the shipped trained heads (as in notebook 06).

Run: ``python benchmarks/course_models.py`` (about a minute on the CPU). Writes
``benchmarks/results/course_models.json`` and prints it; ``python benchmarks/readme_tables.py``
then rewrites the README's tables from the results files.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

import eelib
from eelib.vision import zoo
from eelib._util.cache import save_json

RESULTS = Path(__file__).resolve().parent / "results" / "course_models.json"


def chapter1(data, device) -> dict:
    x, y = next(iter(data.loaders(64, seed=0).train))
    test_loader = data.loaders(64).test
    rows = {}
    for name, build in (("plain20", lambda: eelib.plain_net(20, width=8)),
                        ("plain56", lambda: eelib.plain_net(56, width=8)),
                        ("resnet56", lambda: eelib.resnet(56, width=8))):
        run = zoo.load_trained(name, device=device, progress=False)
        meta = zoo.shipped_metadata(name)
        eelib.seed_everything(0)
        norms = list(eelib.gradient_norms(build().to(device), x, y).values())
        rows[name] = {
            "layers": run.recipe.model.depth,
            "residual": run.recipe.model.residual,
            "parameters": eelib.count_parameters(run.model),
            "train_loss_last_epoch": run.history.column("train_loss")[-1],
            "test_accuracy": eelib.evaluate(run.model, test_loader, device=device).accuracy,
            "gradient_norm_first_over_last_conv": norms[0] / norms[-2],
            "train_seconds": meta["train_seconds"],
        }
    return rows


def chapter2(data, device) -> dict:
    joint = zoo.load_trained("ee_resnet20", device=device, progress=False).model
    base = zoo.load_trained("resnet20", device=device, progress=False).model
    eelib.seed_everything(0)  # the same calls, in the same order, as notebook 02
    frozen = eelib.EarlyExitNet(copy.deepcopy(base), joint.points, pool_size=4).to(device)
    start = time.perf_counter()
    with eelib.reproducible_training(device):
        eelib.train_exits(frozen, data.loaders(64, seed=0).train, mode="frozen", epochs=3, lr=0.05, progress=False)
    seconds = time.perf_counter() - start
    loaders = data.loaders(64, seed=0)
    costs = eelib.exit_costs(joint)
    return {
        "exits": list(joint.exit_names),
        "relative_flops": list(costs.relative_flops),
        "full_mflops": costs.full_flops / 1e6,
        "joint": eelib.exit_outputs(joint, loaders.test).accuracy_per_exit(),
        "frozen": eelib.exit_outputs(frozen, loaders.test).accuracy_per_exit(),
        "frozen_epochs": 3,
        "frozen_train_seconds": seconds,
    }


def chapter4(data, device) -> dict:
    ee = zoo.load_trained("ee_resnet20", device=device, progress=False).model
    loaders = data.loaders(256)
    val, test = eelib.exit_outputs(ee, loaders.val), eelib.exit_outputs(ee, loaders.test)
    costs = eelib.exit_costs(ee)
    rows = {}
    for measure in ("max_prob", "entropy", "margin", "patience"):
        cal = eelib.calibrate(val, costs, measure=measure, max_accuracy_drop=0.005)
        ev = eelib.evaluate_policy(cal.policy, test, costs)
        rows[measure] = {"threshold": cal.policy.thresholds[0], "val_accuracy": cal.val.accuracy,
                         "test_accuracy": ev.accuracy, "test_flops_saved": ev.flops_saved}
    oracle = eelib.evaluate_oracle(test, costs)
    return {
        "policies": rows,
        "max_accuracy_drop": 0.005,
        "oracle": {"test_accuracy": oracle.accuracy, "test_flops_saved": oracle.flops_saved},
        "final_exit": {"val_accuracy": val.accuracy_per_exit()[-1], "test_accuracy": test.accuracy_per_exit()[-1]},
    }


def chapter5(data, device) -> dict:
    ee = zoo.load_trained("ee_resnet20", device=device, progress=False).model
    loaders = data.loaders(256)
    val, test = eelib.exit_outputs(ee, loaders.val), eelib.exit_outputs(ee, loaders.test)
    costs = eelib.exit_costs(ee)
    cost_model = eelib.CostModel(costs.flops, costs.full_flops, error_cost=1.0, reject_cost=0.1)
    rows = {}
    for mode in ("combined", "exit_only", "reject_only"):
        budget = None if mode == "reject_only" else 0.4 * costs.full_flops
        cal = eelib.calibrate_reject(val, cost_model, flops_budget=budget, mode=mode)
        ev = eelib.evaluate_reject_policy(cal.policy, test, cost_model)
        rows[mode] = {"accuracy": ev.accuracy, "coverage": ev.coverage, "relative_flops": ev.relative_flops,
                      "cost": ev.cost}
    return {"policies": rows, "budget_fraction_of_full": 0.4, "error_cost": 1.0, "reject_cost": 0.1}


def chapter6() -> dict:
    lm = eelib.load_lm("course")
    text = eelib.heldout_text("calibration")
    lens = eelib.EarlyExitLM(lm, exit_layers=list(range(1, lm.n_layers)))
    heads = eelib.course_exits(lm, exit_layers=range(1, lm.n_layers))
    return {
        "tokens": 2000,
        "layers": list(range(1, lm.n_layers + 1)),
        "logit_lens": eelib.token_exit_outputs(lens, text, max_tokens=2000).outputs.accuracy_per_exit(),
        "trained_heads": eelib.token_exit_outputs(heads, text, max_tokens=2000).outputs.accuracy_per_exit(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")  # the README's figures are the CPU's (a GPU rounds differently)
    start = time.perf_counter()
    data = eelib.load_data("mnist5k")
    results = {"chapter1": chapter1(data, device), "chapter2": chapter2(data, device),
               "chapter4": chapter4(data, device), "chapter5": chapter5(data, device), "chapter6": chapter6(),
               "details": {"data": "mnist5k (test split: 1,000 digits)", "device": "cpu", "threads": 1,
                           "machine": f"{platform.machine()}, torch {torch.__version__}"}}
    results["details"]["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_json(results, args.out)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
