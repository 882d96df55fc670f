"""Benchmark: how much compute and time the course's early-exit ResNet saves, measured.

Loads (or trains once) ``ee_resnet20`` on the offline data set (``mnist5k``), calibrates a
max-probability policy on the validation split for at most 0.5 percentage point accuracy drop
against the final exit, and measures on the test split, on the CPU:

* ``accuracy_full``, ``accuracy_policy``: the final exit's and the policy's accuracy (fractions);
* ``flops_saved``, ``oracle_flops_saved``: 1 - average FLOPs / FLOPs of the network without exits,
  for the policy and for the oracle (``FlopCounterMode`` counts, exit heads included);
* ``ideal_speedup``: full FLOPs / policy FLOPs;
* ``speedup_batch1``, ``speedup_batch256``: measured wall-clock time of the full network divided
  by that of dynamic inference (:func:`eelib.vision.dynamic.route`, which really skips the blocks after
  each sample's exit), over the test images in batches of 1 (the first 300 images) and of 256;
  the details also give the time of routing with a policy that never exits (every head and
  decision paid, nothing skipped), which measures what the heads and decisions cost;
* ``never_exit_overhead_batch1``, ``never_exit_overhead_batch256``: that time over the full
  network's, minus 1 (what the heads and decisions cost, as a fraction of the network);
* ``latency_ideal_speedup_batch256``: the full network's time over the time the policy's exits
  would take if each sample's exit cost its measured share of the full network's time at
  batch 256 (:func:`eelib.vision.cost.latency_per_exit` on 256 test images: exit ``k`` alone costs
  ``t_k / 256`` per sample) — the speedup routing could reach if taking samples out of the
  batch cost nothing and a smaller batch ran as efficiently per sample as a full one.

Goals (issue 12), checked and printed: ``speedup_batch1 >= 0.85 * ideal_speedup`` (on the
batch-1 images), ``speedup_batch256 >= 0.85 * latency_ideal_speedup_batch256``, never-exit
overhead at most 10% at batch 1 and 3% at batch 256.

Run: ``python benchmarks/resnet_exits.py`` (about a minute once the model is cached). Writes
``benchmarks/results/resnet_exits.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import eelib
from eelib._util.cache import save_json
from eelib.policies import calibrate, evaluate_oracle, evaluate_policy

RESULTS = Path(__file__).resolve().parent / "results" / "resnet_exits.json"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: steadier timings)")
    parser.add_argument("--repeats", type=int, default=9, help="timed passes per measurement (the fastest counts)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    trained = eelib.load_trained("ee_resnet20", device=device)
    model = trained.model.eval()
    data = eelib.load_data(trained.recipe.data)
    loaders = data.loaders(256)
    val, test = eelib.exit_outputs(model, loaders.val, device=device), eelib.exit_outputs(model, loaders.test, device=device)
    costs = eelib.exit_costs(model)
    cal = calibrate(val, costs, measure="max_prob", max_accuracy_drop=0.005)
    policy_test = evaluate_policy(cal.policy, test, costs)
    oracle = evaluate_oracle(test, costs)
    images = torch.stack([data.test[i][0] for i in range(len(data.test))])
    dynamic = eelib.dynamic_inference(cal.policy, model, images)
    simulated = eelib.apply_policy(cal.policy, test.logits)
    start = time.perf_counter()
    b256 = eelib.measure_speedup(cal.policy, model, images, batch_size=256, repeats=args.repeats)
    b1 = eelib.measure_speedup(cal.policy, model, images[:300], batch_size=1, repeats=args.repeats)
    latency = eelib.latency_per_exit(model, images[:256], repeats=args.repeats)
    per_sample = torch.tensor(latency, dtype=torch.float64)[dynamic.exits.cpu()]  # t_k of each sample's exit
    latency_ideal = latency[-1] * len(images) / float(per_sample.sum())
    goals = {"speedup_batch1 >= 0.85 * ideal": b1.speedup >= 0.85 * b1.ideal_speedup,
             "speedup_batch256 >= 0.85 * latency ideal": b256.speedup >= 0.85 * latency_ideal,
             "never-exit overhead batch 1 <= 10%": b1.overhead <= 0.10,
             "never-exit overhead batch 256 <= 3%": b256.overhead <= 0.03}
    results = {
        "accuracy_full": test.accuracy_per_exit()[-1],
        "accuracy_policy": policy_test.accuracy,
        "flops_saved": policy_test.flops_saved,
        "oracle_flops_saved": oracle.flops_saved,
        "ideal_speedup": policy_test.ideal_speedup,
        "speedup_batch1": b1.speedup,
        "speedup_batch256": b256.speedup,
        "never_exit_overhead_batch1": b1.overhead,
        "never_exit_overhead_batch256": b256.overhead,
        "latency_ideal_speedup_batch256": latency_ideal,
        "goals_met": goals,
        "details": {
            "model": "ee_resnet20", "data": f"{data.name} test split ({len(images)} images)",
            "exits": list(model.exit_names), "exit_mflops": [f / 1e6 for f in costs.flops],
            "full_mflops": costs.full_flops / 1e6,
            "policy": {"measure": cal.policy.measure, "thresholds": list(cal.policy.thresholds),
                       "calibrated_on": "validation split", "target": cal.target},
            "val_accuracy_policy": cal.val.accuracy, "val_flops_saved": cal.val.flops_saved,
            "test_exit_fractions": list(policy_test.exit_fractions),
            "oracle_accuracy": oracle.accuracy,
            "dynamic_equals_simulated": bool(torch.equal(dynamic.exits, simulated.exits)
                                             and torch.equal(dynamic.predictions, simulated.predictions)),
            "batch256": {"full_s": b256.full_seconds, "dynamic_s": b256.dynamic_seconds, "ideal": b256.ideal_speedup,
                         "never_exit_s": b256.never_exit_seconds, "heads_and_decisions_overhead": b256.overhead},
            "batch1": {"images": b1.n_images, "full_s": b1.full_seconds, "dynamic_s": b1.dynamic_seconds,
                       "ideal": b1.ideal_speedup, "never_exit_s": b1.never_exit_seconds,
                       "heads_and_decisions_overhead": b1.overhead},
            "latency_per_exit_batch256_s": latency,
            "timing_seconds": time.perf_counter() - start,
            "machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_json(results, args.out)
    print(f"{'accuracy, final exit':38s} {results['accuracy_full']:.4f}")
    print(f"{'accuracy, policy (<= 0.5 pp drop on val)':38s} {results['accuracy_policy']:.4f}")
    print(f"{'FLOPs saved, policy':38s} {results['flops_saved']:.3f}")
    print(f"{'FLOPs saved, oracle':38s} {results['oracle_flops_saved']:.3f}")
    print(f"{'ideal speedup':38s} {results['ideal_speedup']:.2f}x")
    print(f"{'measured speedup, batch 1':38s} {results['speedup_batch1']:.2f}x (ideal on those images "
          f"{b1.ideal_speedup:.2f}x)")
    print(f"{'measured speedup, batch 256':38s} {results['speedup_batch256']:.2f}x (latency ideal "
          f"{latency_ideal:.2f}x)")
    for s in (b1, b256):
        print(f"heads and decisions alone (never-exit routing), batch {s.batch_size}: {100 * s.overhead:+.0f}% "
              f"of the full network's time")
    print(f"dynamic inference = simulated policy on every test image: {results['details']['dynamic_equals_simulated']}")
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
