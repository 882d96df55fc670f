"""Benchmark: self-speculative decoding on the two course models — exactness, speed measured and predicted.

For ``course`` (with its tuned exit heads) and ``course-ee`` (trained for early exit), on the CPU,
``--threads`` threads (default 1), batch size 1, greedy decoding:

* **Prompts**: ``--prompts`` prompts of 32 tokens at evenly spaced places of the *test* half of the
  held-out text (:func:`eelib.lm.speculative.calibration_prompts`), ``--new-tokens`` new tokens each.
* ``exact``: share of generated tokens equal to Hugging Face ``generate``'s greedy tokens, for the
  fixed-exit loop and the dynamic one (DSSD): must be 1.0.
* ``loops``: one row per loop and setting, every row measured side by side with the plain loop
  (:func:`eelib.lm.speed.measure_generation_speed`: for each prompt the loops run in turn,
  ``--repeats`` times, the fastest run counts; whole calls, prompt included): ``tokens_per_second``
  measured, ``predicted_tokens_per_second`` by the speed model (:class:`eelib.lm.speed.SpeedModel`: the
  primitives timed once and the overheads fitted on the *calibration* half, then each loop priced from
  its own trace), their ``ratio``, ``speedup`` against the plain loop, and the loop's statistics
  (acceptance rate, tokens per round, mean exit layer). Loops: plain, fixed-exit self-speculative
  (calibrated defaults, and drafting from layers 1, 2, 4), dynamic self-speculative (DSSD, calibrated),
  chapter 7's early exit at ``--target`` agreement (exits after layers 2 and 4: max_prob lazy and
  copy-up, CALM's saturation and classifier gates), and Hugging Face ``generate`` and its prompt
  lookup (measured only: the speed model prices eelib's loops).
* ``primitives``: the measured block time against rows, the heads, the overheads.
* ``bpc_final``, ``agreement_by_layer`` (each exit against the final layer, test half),
  ``own_agreement_by_layer`` (on the model's own greedy continuations: what drafting sees).
* ``projection``: :mod:`eelib.lm.projection` for GPT-2 124M-1.5B and LLaMA-2 7B/70B, the ``cpu``
  regime (the measured block time by rows, the larger of the two passes' row by row) and the ``gpu`` one, speedup against the
  acceptance rate (draft exit at a quarter of the depth), with the published figures beside.

Run: ``python benchmarks/self_speculative.py`` (about 15 minutes, 1 thread). Writes
``benchmarks/results/self_speculative.json``.
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
from eelib.lm.confidence import calibrate_gate, train_exit_classifiers
from eelib.lm.distill import own_agreement
from eelib.lm.exits import agreement_by_layer, course_exits, heldout_text, token_exit_outputs
from eelib.lm.generate import token_exit_costs
from eelib.lm.projection import CONFIGS, GPU, PUBLISHED, cpu_regime, model_shape, projected_speedup
from eelib.lm.speculative import (calibration_prompts, dynamic_speculative_generate, resolve_dynamic,
                                  resolve_settings, self_speculative_generate)
from eelib.lm.speed import fit_speed_model, measure_generation_speed
from eelib.policies import calibrate

RESULTS = Path(__file__).resolve().parent / "results" / "self_speculative.json"
MODELS = ("course", "course-ee")
ACCEPTANCE_GRID = tuple(round(0.05 * i, 2) for i in range(20))  # 0 .. 0.95


def _hf_greedy(lm, ids, n):
    out = lm.model.generate(ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                            max_new_tokens=n, min_new_tokens=n, pad_token_id=lm.tokenizer.eos_token_id)
    return out[0, len(ids):].tolist()


def _row(name, speed, loop, model, setting):
    gens = speed.generations.get(loop, [])
    row = dict(loop=name, setting=setting, tokens_per_second=speed.tokens_per_second(loop),
               speedup=speed.speedup(loop, "no exits"))
    if gens:
        predicted = model.tokens_per_second(gens)
        judged = sum(r.compared for g in gens for r in g.rounds)
        rounds = sum(len(g.rounds) for g in gens)
        row.update(predicted_tokens_per_second=predicted, ratio=predicted / row["tokens_per_second"],
                   predicted_speedup=model.tokens_per_second(gens) / model.tokens_per_second(speed.generations["no exits"]),
                   acceptance=sum(g.accepted for g in gens) / judged if judged else None,
                   tokens_per_round=sum(len(g.steps) for g in gens) / rounds if rounds else None,
                   avg_exit_layer=sum(g.avg_exit_layer * len(g.steps) for g in gens) / sum(len(g.steps) for g in gens))
    return row


def measure_model(name: str, args) -> dict:
    started = time.perf_counter()
    lm = eelib.load_lm(name, device="cpu")
    ee = course_exits(lm, list(range(1, lm.n_layers // 2 + 1)))  # the draft exits that were calibrated
    fixed, dynamic = resolve_settings(ee), resolve_dynamic(ee)
    prompts = calibration_prompts(lm, args.prompts, "test")
    model = fit_speed_model(ee, calibration_prompts(lm, 2), max_new_tokens=args.new_tokens)  # calibration half
    same = {"self-speculative": 0, "dynamic speculative": 0}
    total = 0
    flops = {"plain": 0, "self-speculative": 0, "dynamic speculative": 0}
    for p in prompts:
        want = _hf_greedy(lm, p, args.new_tokens)
        a = self_speculative_generate(ee, p, max_new_tokens=args.new_tokens, count_flops=True)
        b = dynamic_speculative_generate(ee, p, max_new_tokens=args.new_tokens, count_flops=True)
        same["self-speculative"] += sum(x == y for x, y in zip(a.tokens, want))
        same["dynamic speculative"] += sum(x == y for x, y in zip(b.tokens, want))
        total += len(want)
        flops["self-speculative"] += a.flops
        flops["dynamic speculative"] += b.flops
        flops["plain"] += eelib.lm.generate.early_exit_generate(ee, p, None, max_new_tokens=args.new_tokens,
                                                                count_flops=True).flops
    loops = ("no exits", "self-speculative", "dynamic speculative", "HF generate", "HF prompt lookup")
    speed = measure_generation_speed(ee, prompts, None, max_new_tokens=args.new_tokens, repeats=args.repeats,
                                     loops=loops)
    rows = [_row("plain", speed, "no exits", model, "every layer, the final head"),
            _row("self-speculative", speed, "self-speculative", model,
                 f"layer {ee.exit_layers[fixed.draft_exit]}, max_prob >= {fixed.threshold:g}, <= {fixed.max_draft} "
                 f"drafts, vocabulary {len(fixed.draft_vocab) if fixed.draft_vocab else 'all'} (calibrated)"),
            _row("dynamic speculative (DSSD)", speed, "dynamic speculative", model,
                 f"layers {[ee.exit_layers[k] for k in dynamic.draft_exits]}, {dynamic.measure} "
                 f"{'<=' if dynamic.measure == 'entropy' else '>='} {[round(t, 2) for t in dynamic.thresholds]}, "
                 f"<= {dynamic.max_draft} drafts (calibrated)"),
            _row("HF generate", speed, "HF generate", model, "greedy"),
            _row("HF prompt lookup", speed, "HF prompt lookup", model, "prompt_lookup_num_tokens=3")]
    for layer in (1, 2, 4):  # the fixed-exit draft from other layers: the same model must price them all
        k = ee.exit_layers.index(layer)
        s = measure_generation_speed(ee, prompts, None, max_new_tokens=args.new_tokens, repeats=args.repeats,
                                     loops=("no exits", "self-speculative"),
                                     speculative=dict(draft_exit=k, threshold=0.3, max_draft=4, draft_vocab=1024))
        rows.append(_row("self-speculative", s, "self-speculative", model,
                         f"layer {layer}, max_prob >= 0.3, <= 4 drafts, vocabulary 1024"))
    rows += chapter7_rows(lm, prompts, model, args)
    every = course_exits(lm, list(range(1, lm.n_layers)))
    own = own_agreement(every, torch.stack([torch.cat([p, torch.tensor(_hf_greedy(lm, p, 128))]) for p in prompts]))
    fixed_row, dynamic_row = rows[1], rows[2]
    primitives = model.primitives
    return {
        "exact": {loop: n / total for loop, n in same.items()},
        "speedup": fixed_row["speedup"], "dynamic_speedup": dynamic_row["speedup"],
        "speedup_vs_hf_generate": speed.speedup("self-speculative", "HF generate"),
        "dynamic_speedup_vs_hf_generate": speed.speedup("dynamic speculative", "HF generate"),
        "flops_ratio": {loop: flops[loop] / flops["plain"] for loop in ("self-speculative", "dynamic speculative")},
        "loops": rows,
        "fixed": dict(draft_layer=ee.exit_layers[fixed.draft_exit], threshold=fixed.threshold,
                      max_draft=fixed.max_draft, draft_vocab=None if fixed.draft_vocab is None else len(fixed.draft_vocab)),
        "dynamic": dict(exit_layers=[ee.exit_layers[k] for k in dynamic.draft_exits], measure=dynamic.measure,
                        thresholds=list(dynamic.thresholds), max_draft=dynamic.max_draft,
                        draft_vocab=None if dynamic.draft_vocab is None else len(dynamic.draft_vocab)),
        "primitives": {"block_us_by_rows_at_context": {str(c): {str(r): round(primitives.block_time(r, c) * 1e6, 2)
                                                                 for r in primitives.rows} for c in (32, 64, 96)},
                       "final_head_us": round(primitives.final_head[0] * 1e6, 2),
                       "ops_us": {f"{op} {size}": round(t * 1e6, 2) for (op, size), t in primitives.ops.items()},
                       "step_overhead_us": round(model.step * 1e6, 2), "round_overhead_us": round(model.round * 1e6, 2)},
        "row_scale": [primitives.block_time(r, 64) / primitives.block_time(1, 64) for r in range(1, 9)],
        "bpc_final": eelib.evaluate_text(lm, heldout_text("all")).bits_per_character,
        "agreement_by_layer": list(agreement_by_layer(every, heldout_text("test"))[:-1]),
        "own_agreement_by_layer": list(own[:-1]),
        "seconds": time.perf_counter() - started,
    }


def chapter7_rows(lm, prompts, model, args) -> list[dict]:
    """Early-exit generation (chapter 7): exits after layers 2 and 4 at the target agreement, four deciders."""
    ee = course_exits(lm, (2, 4))
    cal_text = heldout_text("calibration")
    outputs = token_exit_outputs(ee, cal_text, max_tokens=args.calibration_tokens).outputs
    costs = token_exit_costs(ee, 32 + args.new_tokens // 2)
    policy = calibrate(outputs, costs, max_accuracy_drop=1 - args.target).policy
    del outputs
    classifiers = train_exit_classifiers(ee, cal_text, max_tokens=args.calibration_tokens)
    rows = []
    for decider, kv in (("max_prob", "lazy"), ("max_prob", "copy"), ("saturation", "lazy"), ("classifier", "lazy")):
        if decider == "max_prob":
            kwargs = dict(policy=policy, gate=None)
        else:
            gate = calibrate_gate(ee, cal_text, decider, target=args.target, classifiers=classifiers,
                                  max_tokens=args.calibration_tokens).gate
            kwargs = dict(policy=None, gate=gate)
        speed = measure_generation_speed(ee, prompts, kwargs["policy"], max_new_tokens=args.new_tokens, kv=kv,
                                         repeats=args.repeats, loops=("early exit", "no exits"), gate=kwargs["gate"])
        rows.append(_row(f"early exit ({decider}, {kv})", speed, "early exit", model,
                         f"exits after layers 2, 4; {args.target:.0%} agreement (calibrated)"))
    return rows


def projection(results: dict) -> dict:
    """Speedup against the acceptance rate for real shapes, in this machine's regime and a GPU-like one."""
    # this CPU: the larger of the passes' measured row scales, row by row (a pass whose one-row timings hit a busy
    # moment measures more rows as cheaper than one); cpu_regime also makes it non-decreasing
    scales = [m["row_scale"] for m in results["models"].values()]
    regimes = {"cpu": cpu_regime([max(s[i] for s in scales) for i in range(len(scales[0]))]), "gpu": GPU}
    curves = {}
    for name in CONFIGS:
        shape = model_shape(name)
        curves[name] = {"n_layers": shape.n_layers, "head_over_block_flops": shape.head_flops / shape.block_flops,
                        **{regime: [round(projected_speedup(shape, r, a)[0], 4) for a in ACCEPTANCE_GRID]
                           for regime, r in regimes.items()}}
    measured = [dict(model=m, loop=row["loop"], setting=row["setting"], acceptance=row["acceptance"],
                     speedup=row["speedup"])
                for m, r in results["models"].items() for row in r["loops"]
                if row.get("acceptance") is not None and "speculative" in row["loop"]]
    return {"acceptance": list(ACCEPTANCE_GRID), "draft_fraction": 0.25, "models": curves, "measured": measured,
            "published": list(PUBLISHED),
            "gpu_regime": dict(bandwidth=GPU.bandwidth, peak=GPU.peak, launch=GPU.launch,
                               bytes_per_number=GPU.bytes_per_number)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per prompt and loop (the fastest counts)")
    parser.add_argument("--target", type=float, default=0.95, help="chapter 7: agreement to calibrate for")
    parser.add_argument("--calibration-tokens", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--projection-only", action="store_true",
                        help="recompute the projection from the measurements already in --out (no timing)")
    args = parser.parse_args(argv)
    if args.projection_only:
        import json

        results = json.loads(args.out.read_text(encoding="utf-8"))
        results["projection"] = projection(results)
        save_json(results, args.out)
        print(f"projection recomputed; written to {args.out}")
        return results
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    models = {name: measure_model(name, args) for name in args.models.split(",")}
    results = {
        "models": models,
        "prompts": args.prompts, "prompt_tokens": 32, "new_tokens": args.new_tokens, "repeats": args.repeats,
        "threads": args.threads, "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), "
                    f"torch {torch.__version__}",
    }
    results["projection"] = projection(results)
    save_json(results, args.out)
    for name, m in models.items():
        for row in m["loops"]:
            pred = row.get("predicted_tokens_per_second")
            predicted = "" if pred is None else f"predicted {pred:7.1f} (ratio {row['ratio']:.2f})"
            print(f"{name:9s} {row['loop']:28s} {row['tokens_per_second']:7.1f} tok/s {predicted:30s} "
                  f"speedup {row['speedup']:.2f}x  {row['setting']}")
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
