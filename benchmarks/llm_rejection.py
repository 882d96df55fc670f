"""Benchmark: rejection for language models (chapter 9) on both course models, over random splits.

Data: for each course model (``course``, ``course-ee``) with its shipped trained exit heads after layers 2
and 4, every exit's max probability and top-1 token on the whole held-out text
(:func:`eelib.lm.rejection.token_scores` of its two halves, as chapter 9 computes them, joined: about 38,000
tokens): the pool. Each random split draws
calibration tokens from the pool and keeps the rest as the test tokens (``eelib.lm.rejection_splits``).

1. **Token exits with a guarantee** (CALM's consistency): a max-probability threshold shared by the two early
   exits, disagreement with the full model at most ``epsilon`` = 0.05 with probability at least
   1 - ``delta`` = 0.9, on ``--calibration`` tokens (2,000) per split, ``--splits`` splits (100), beside chapter
   7's naive threshold on the same candidates. Reported: the violation rate (share of the splits whose test
   disagreement is above epsilon; the pool's, where the pool is taken as the population, is reported too and
   is nearly the same, since the test tokens are 95% of the pool), the mean test disagreement, the share of
   test tokens leaving early, and their FLOPs relative to the model without exits with CALM's copied-up keys
   and values (``token_exit_costs(ee, 128, kv="copy")``; with the lazy cache no exit costs less than the full
   model, chapter 7).
2. **A model that abstains**: the full model predicts the next token only when its max probability passes a
   threshold chosen by :func:`eelib.rejection.guaranteed_threshold` for a selective risk against the *true*
   text of at most ``alpha`` = 0.5 (delta 0.1), beside the naive threshold; same splits. Also each exit's AURC
   on the whole pool and the oracle's.
3. **Exit or reject under a FLOPs budget** (:func:`eelib.rejection.calibrate_reject`; an error costs 1, a
   rejection 0.5, a budget of 80% of the model without exits per token, copy-up costs), against exit-only
   (same budget) and reject-only (the full model and Chow's rule); ``--reject-calibration`` tokens (4,000) per
   split, ``--reject-splits`` splits (50: each split calibrates three policies, the slow part). Both budgeted
   policies are calibrated for the budget less a Hoeffding margin (``flops_margin``, delta 0.05). Reported: how
   often the combined policy is within the budget on the test tokens, and its mean selective risk against
   exit-only's.

Run: ``python benchmarks/llm_rejection.py`` (a few minutes on 1 thread once the token scores are cached; the
first run computes them, about 15 s per model). Writes ``benchmarks/results/llm_rejection.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import eelib
from eelib._util.cache import save_json
from eelib.lm.rejection import TokenScores, risk_coverage_by_exit, token_scores
from eelib.lm.rejection_splits import abstain_split_study, reject_split_study, split_study
from eelib.rejection import CostModel, oracle_risk_coverage

RESULTS = Path(__file__).resolve().parent / "results" / "llm_rejection.json"
MODELS = ("course", "course-ee")


def one_model(name: str, args: argparse.Namespace) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    ee = eelib.course_exits(eelib.load_lm(name), exit_layers=(2, 4))
    data = TokenScores.join([token_scores(ee, eelib.heldout_text(part)) for part in ("calibration", "test")])
    costs = eelib.token_exit_costs(ee, 128, kv="copy")
    consistency = split_study(data, epsilon=args.epsilon, delta=args.delta, calibration=args.calibration,
                              splits=args.splits, seed=args.seed, costs=costs)
    abstain = abstain_split_study(data, alpha=args.alpha, delta=args.delta, calibration=args.calibration,
                                  splits=args.splits, seed=args.seed)
    cost_model = CostModel(costs.flops, costs.full_flops, error_cost=1.0, reject_cost=args.reject_cost)
    reject = reject_split_study(data, cost_model, flops_budget=args.budget * costs.full_flops,
                                calibration=args.reject_calibration, splits=args.reject_splits, seed=args.seed)

    def study(s) -> dict:
        return {m: {"violation_rate": s.violation_rate(m), "pool_violation_rate": s.violation_rate(m, "pool"),
                    "test_risk_mean": s.mean("test_risk", m), "test_risk_max": float(s.test_risk[i].max()),
                    "coverage": s.mean("coverage", m),
                    **({"relative_flops": s.mean("relative_flops", m)} if not s.relative_flops[i].isnan().all() else {})}
                for i, m in enumerate(s.methods)}

    curves = risk_coverage_by_exit(data)
    return {
        "tokens": len(data),
        "exits": list(ee.exit_names),
        "agreement_by_exit": data.agrees.double().mean(1).tolist(),
        "accuracy_by_exit": data.correct.double().mean(1).tolist(),
        "relative_flops_by_exit": list(costs.relative_flops),
        "consistency": study(consistency),
        "abstain": study(abstain),
        "aurc_by_exit": {n: c.aurc for n, c in curves.items()},
        "aurc_oracle": oracle_risk_coverage(data.correct[-1]).aurc,
        "exit_or_reject": {m: {"over_budget_rate": reject.over_budget_rate(m), "risk": reject.mean("risk", m),
                               "coverage": reject.mean("coverage", m), "relative_flops": reject.mean("relative_flops", m),
                               "cost": reject.mean("cost", m)} for m in reject.modes},
        "combined_lower_risk_than_exit_only_rate": reject.lower_risk_rate("combined", "exit_only"),
        "budget_margin_relative": reject.margin / costs.full_flops,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilon", type=float, default=0.05, help="disagreement with the full model to guarantee")
    parser.add_argument("--alpha", type=float, default=0.5, help="selective risk (vs the true text) to guarantee")
    parser.add_argument("--delta", type=float, default=0.1, help="allowed probability of a risk above the target")
    parser.add_argument("--calibration", type=int, default=2000, help="calibration tokens per split (the guarantees)")
    parser.add_argument("--splits", type=int, default=100, help="random splits for the guarantees (>= 100)")
    parser.add_argument("--budget", type=float, default=0.8, help="FLOPs budget, fraction of the model without exits")
    parser.add_argument("--reject-cost", type=float, default=0.5, help="cost of a rejection (an error costs 1)")
    parser.add_argument("--reject-calibration", type=int, default=4000, help="calibration tokens per split (exit or reject)")
    parser.add_argument("--reject-splits", type=int, default=50, help="random splits for exit or reject")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start, cpu = time.perf_counter(), time.process_time()
    models = {name: one_model(name, args) for name in MODELS}
    results = {
        "models": models,
        "settings": {k: getattr(args, k) for k in ("epsilon", "alpha", "delta", "calibration", "splits", "budget",
                                                    "reject_cost", "reject_calibration", "reject_splits", "seed")},
        "details": {"text": "eelib.heldout_text('calibration') and ('test'): the held-out tenth of Tiny Shakespeare, pooled",
                    "exits": "shipped trained heads after layers 2 and 4, and the final exit",
                    "measure": "max_prob", "costs": "token_exit_costs(ee, context=128, kv='copy')",
                    "budget_delta": 0.05, "seconds": time.perf_counter() - start,
                    "cpu_seconds": time.process_time() - cpu,
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_json(results, args.out)
    for name, m in models.items():
        c, a, r = m["consistency"], m["abstain"], m["exit_or_reject"]
        print(f"{name}: {m['tokens']} tokens, {m['seconds']:.0f} s")
        for method in ("naive", "guaranteed"):
            print(f"  consistency {method:10s}: violation {c[method]['violation_rate']:.2f}, test disagreement "
                  f"{c[method]['test_risk_mean']:.4f}, early {c[method]['coverage']:.3f}, FLOPs "
                  f"{c[method]['relative_flops']:.3f}")
            print(f"  abstain     {method:10s}: violation {a[method]['violation_rate']:.2f}, test risk "
                  f"{a[method]['test_risk_mean']:.3f}, coverage {a[method]['coverage']:.3f}")
        for mode, e in r.items():
            print(f"  {mode:12s}: over budget {e['over_budget_rate']:.2f}, risk {e['risk']:.3f}, coverage "
                  f"{e['coverage']:.3f}, FLOPs {e['relative_flops']:.3f}, cost {e['cost']:.3f}")
    return results


if __name__ == "__main__":
    main()
