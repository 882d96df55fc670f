"""Benchmark: guaranteed rejection thresholds and early exit with a reject option, over random splits.

Data: the course's ``ee_resnet20`` on ``mnist5k``; the logits of every exit are computed once on
the 1,000 validation and the 1,000 test digits, which together form a pool of 2,000 digits (the
model never trained on either). Each of ``--splits`` random splits (seeded) draws
``--calibration`` of them (default 500) as the calibration split and keeps the other 1,500 as the
test split. Why 500 / 1,500: the test risk of a finite test split is noisy, and the test split is
the complement of the calibration split in a fixed pool of 53 final-exit errors (a lucky
calibration split leaves more errors to its test split), so a small test split makes the
test-split violation rate overstate how often the risk is really above alpha. Measured with
``--calibration 1000`` (1,000 / 1,000): violation rate 0.155 on the test splits, while the risk
on the whole pool (the ``pool_violation_rate`` in the details) was above alpha in 0.02 of the splits.

On each split:

* **Guaranteed threshold** (:func:`eelib.rejection.guaranteed_threshold`, max probability at the
  final exit, ``alpha`` = 1% selective risk, ``delta`` = 0.1): chosen on the calibration split,
  measured on the test split. ``violation_rate`` is the fraction of splits whose *test* selective
  risk is above alpha (goal: at most delta; the test risk is itself noisy, so this is a stricter
  check than the guarantee, which is about the risk on the distribution; the details also give
  ``pool_violation_rate``, the fraction of splits whose threshold has a risk above alpha on the
  whole pool of 2,000 digits, the closest to "the distribution" here); ``coverage`` is the mean
  test coverage.
* **Early exit with a reject option** (:func:`eelib.rejection.calibrate_reject`): cost model
  error = 1, rejection = 0.1 (a rejection costs a tenth of an error; Chow's rule would reject a
  sample whose chance of being wrong is above 10%), compute not priced but bounded by a budget of
  40% of the FLOPs of the network without exits (``budget_flops``, per digit). The ``combined``
  policy and the ``exit_only`` baseline are calibrated for the budget; the ``reject_only``
  baseline runs the full network (it cannot meet the budget) with Chow's rule at the final exit.
  Reported: their mean test accuracy of the accepted digits, coverage and average FLOPs, and
  how often the combined policy went over its budget on the test split.

Run: ``python benchmarks/rejection.py`` (about a minute on one CPU thread once the model is cached).
Writes ``benchmarks/results/rejection.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import eelib
from eelib.exits import ExitOutputs
from eelib.policies import confidence
from eelib.rejection import (CostModel, calibrate_reject, evaluate_reject_policy, evaluate_selective,
                             guaranteed_threshold)

RESULTS = Path(__file__).resolve().parent / "results" / "rejection.json"


def _subset(outputs: ExitOutputs, idx: torch.Tensor) -> ExitOutputs:
    return ExitOutputs(outputs.logits[:, idx], outputs.labels[idx], outputs.exit_names)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=200, help="random calibration/test splits (>= 100)")
    parser.add_argument("--alpha", type=float, default=0.01, help="selective risk to guarantee")
    parser.add_argument("--delta", type=float, default=0.1, help="allowed probability of a risk above alpha")
    parser.add_argument("--budget", type=float, default=0.4, help="FLOPs budget, fraction of the full network")
    parser.add_argument("--reject-cost", type=float, default=0.1, help="cost of a rejection (an error costs 1)")
    parser.add_argument("--calibration", type=int, default=500, help="calibration digits per split (the rest: test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    device = torch.device("cpu")
    trained = eelib.load_trained("ee_resnet20", device=device)
    model = trained.model.eval()
    data = eelib.load_data(trained.recipe.data)
    loaders = data.loaders(256)
    val = eelib.exit_outputs(model, loaders.val, device=device)
    test = eelib.exit_outputs(model, loaders.test, device=device)
    pool = ExitOutputs(torch.cat([val.logits, test.logits], 1), torch.cat([val.labels, test.labels]), val.exit_names)
    costs = eelib.exit_costs(model)
    cost_model = CostModel(costs.flops, costs.full_flops, error_cost=1.0, reject_cost=args.reject_cost)
    budget = args.budget * costs.full_flops
    scores = confidence(pool.logits, "max_prob")[-1]
    correct = pool.correct[-1]
    n = len(pool.labels)
    generator = torch.Generator().manual_seed(args.seed)
    rows: dict[str, list[float]] = {k: [] for k in (
        "test_risk", "pool_risk", "test_coverage", "cal_coverage", "risk_bound",
        *(f"{p}_{m}" for p in ("combined", "exit_only", "reject_only") for m in ("avg_flops", "accuracy", "coverage")),
        "combined_cal_avg_flops")}
    for _ in range(args.splits):
        perm = torch.randperm(n, generator=generator)
        cal_idx, test_idx = perm[:args.calibration], perm[args.calibration:]
        g = guaranteed_threshold(scores[cal_idx], correct[cal_idx], alpha=args.alpha, delta=args.delta)
        e = evaluate_selective(scores[test_idx], correct[test_idx], g.threshold)
        rows["test_risk"].append(e.risk)
        rows["pool_risk"].append(evaluate_selective(scores, correct, g.threshold).risk)
        rows["test_coverage"].append(e.coverage)
        rows["cal_coverage"].append(g.coverage)
        rows["risk_bound"].append(g.risk_bound)
        cal_out, test_out = _subset(pool, cal_idx), _subset(pool, test_idx)
        for mode in ("combined", "exit_only", "reject_only"):
            limit = None if mode == "reject_only" else budget  # reject-only runs the full network
            cal = calibrate_reject(cal_out, cost_model, flops_budget=limit, mode=mode)
            ev = evaluate_reject_policy(cal.policy, test_out, cost_model)
            rows[f"{mode}_avg_flops"].append(ev.avg_flops)
            rows[f"{mode}_accuracy"].append(ev.accuracy)
            rows[f"{mode}_coverage"].append(ev.coverage)
            if mode == "combined":
                rows["combined_cal_avg_flops"].append(cal.cal.avg_flops)
    over = [f > budget for f in rows["combined_avg_flops"]]
    results = {
        "alpha": args.alpha,
        "delta": args.delta,
        "n_splits": args.splits,
        "violation_rate": _mean([r > args.alpha for r in rows["test_risk"]]),
        "coverage": _mean(rows["test_coverage"]),
        "budget_flops": budget,
        "full_flops": float(costs.full_flops),
        **{f"{p}_{m}": _mean(rows[f"{p}_{m}"]) for p in ("combined", "exit_only", "reject_only")
           for m in ("avg_flops", "accuracy", "coverage")},
        "details": {
            "model": "ee_resnet20", "data": f"{data.name}: validation + test splits pooled ({n} digits), "
                                             f"each split {args.calibration} calibration / {n - args.calibration} test",
            "measure": "max_prob", "guarantee_exit": "final",
            "pool_violation_rate": _mean([r > args.alpha for r in rows["pool_risk"]]),
            "test_risk_mean": _mean(rows["test_risk"]), "test_risk_max": max(rows["test_risk"]),
            "calibration_coverage_mean": _mean(rows["cal_coverage"]),
            "risk_bound_mean": _mean(rows["risk_bound"]),
            "final_exit_accuracy_pool": float(correct.double().mean()),
            "cost_model": {"error_cost": 1.0, "reject_cost": args.reject_cost, "compute_cost": 0.0},
            "budget_fraction_of_full": args.budget,
            "combined_over_budget_on_test_fraction": _mean(over),
            "combined_test_avg_flops_max": max(rows["combined_avg_flops"]),
            "combined_cal_avg_flops_max": max(rows["combined_cal_avg_flops"]),
            "combined_relative_flops": _mean(rows["combined_avg_flops"]) / costs.full_flops,
            "exit_only_relative_flops": _mean(rows["exit_only_avg_flops"]) / costs.full_flops,
            "reject_only_relative_flops": _mean(rows["reject_only_avg_flops"]) / costs.full_flops,
            "seconds": time.perf_counter() - start,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"guarantee: alpha {args.alpha}, delta {args.delta}, {args.splits} splits -> violation rate "
          f"{results['violation_rate']:.3f} (on the whole pool "
          f"{results['details']['pool_violation_rate']:.3f}), mean test coverage {results['coverage']:.3f}, "
          f"mean test risk {results['details']['test_risk_mean']:.4f}")
    print(f"budget {budget / 1e6:.2f} MFLOPs ({100 * args.budget:.0f}% of {costs.full_flops / 1e6:.2f})")
    print(f"{'policy':12s} {'accuracy':>9s} {'coverage':>9s} {'FLOPs %':>8s}")
    for p in ("combined", "exit_only", "reject_only"):
        print(f"{p:12s} {100 * results[f'{p}_accuracy']:8.2f}% {100 * results[f'{p}_coverage']:8.2f}% "
              f"{100 * results[f'{p}_avg_flops'] / costs.full_flops:7.1f}%")
    print(f"combined over budget on the test split in {100 * _mean(over):.1f}% of the splits; wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
