"""Benchmark: self-speculative decoding on the two course models, measured (exactness, speed, acceptance).

For ``course`` (with its tuned exit heads) and ``course-ee`` (trained for early exit), on the CPU,
``--threads`` threads (default 1), batch size 1, greedy decoding:

* **Prompts**: ``--prompts`` prompts of 32 tokens at evenly spaced places of the *test* half of the
  held-out text (:func:`eelib.lm.speculative.calibration_prompts`), ``--new-tokens`` new tokens each.
* ``exact``: share of generated tokens equal to Hugging Face ``generate``'s greedy tokens (must be 1.0).
* ``speedup``: tokens per second of :func:`eelib.self_speculative_generate` (its calibrated defaults:
  ``draft_layer``, ``threshold``, ``max_draft``, ``draft_vocab``) / eelib's plain greedy loop (the same
  decoder without exits), ``speedup_vs_hf_generate``, ``speedup_vs_hf_prompt_lookup``
  (``generate(prompt_lookup_num_tokens=3)``): all loops timed side by side by
  :func:`eelib.lm.generate.measure_generation_speed` (for each prompt the loops run in turn,
  ``--repeats`` times, the fastest run counts; whole calls, prompt included);
  ``tokens_per_second``: ``plain`` and ``self_speculative`` (and both HF loops). The two models have the
  same architecture, so their plain loops cost the same: compare models by their ratios, measured
  side by side within a model's pass, not by tokens per second across passes (the machine's load
  may differ between them).
* ``acceptance`` (drafted tokens confirmed), ``tokens_per_round``, ``layers_per_token`` (block rows
  computed per token), ``flops_ratio`` (FLOPs of self-speculative / plain, ``FlopCounterMode``).
* ``bpc_final``: bits per character of the final layer on the held-out text (last 10%);
  ``agreement_by_layer``: each layer's exit against the model's final layer, test half.
* ``early_exit``: chapter 7's figures at ``--target`` agreement (exits after layers 2 and 4,
  max_prob thresholds calibrated on the calibration half; teacher-forced agreement, layers
  computed, oracle, measured speedup against the plain loop), and the same with CALM's cheap
  decisions (``saturation``, ``classifier``: :mod:`eelib.lm.confidence`, a head paid only to leave).

Run: ``python benchmarks/self_speculative.py`` (about 11 minutes, 1 thread). Writes
``benchmarks/results/self_speculative.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import eelib
from eelib.lm.confidence import calibrate_gate, train_exit_classifiers
from eelib.lm.exits import agreement_by_layer, course_exits, heldout_text, token_exit_outputs
from eelib.lm.generate import early_exit_generate, measure_generation_speed, teacher_forced_eval, token_exit_costs
from eelib.lm.speculative import calibration_prompts, resolve_settings, self_speculative_generate
from eelib.policies import calibrate

RESULTS = Path(__file__).resolve().parent / "results" / "self_speculative.json"
MODELS = ("course", "course-ee")


def _hf_greedy(lm, ids, n):
    out = lm.model.generate(ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                            max_new_tokens=n, min_new_tokens=n, pad_token_id=lm.tokenizer.eos_token_id)
    return out[0, len(ids):].tolist()


def measure_model(name: str, args) -> dict:
    started = time.perf_counter()
    lm = eelib.load_lm(name, device="cpu")
    ee = course_exits(lm, list(range(1, lm.n_layers // 2 + 1)))  # the draft exits that were calibrated
    settings = resolve_settings(ee)
    prompts = calibration_prompts(lm, args.prompts, "test")
    same = total = drafted = accepted = rounds = rows = 0
    flops_spec = flops_plain = 0
    for p in prompts:
        want = _hf_greedy(lm, p, args.new_tokens)
        g = self_speculative_generate(ee, p, max_new_tokens=args.new_tokens, count_flops=True)
        same += sum(a == b for a, b in zip(g.tokens, want))
        total += len(want)
        drafted, accepted, rounds = drafted + g.drafted, accepted + g.accepted, rounds + len(g.rounds)
        rows += sum(r.layers for r in g.rounds)
        flops_spec += g.flops
        flops_plain += early_exit_generate(ee, p, None, max_new_tokens=args.new_tokens, count_flops=True).flops
    speed = measure_generation_speed(ee, prompts, None, max_new_tokens=args.new_tokens, repeats=args.repeats,
                                     loops=("no exits", "self-speculative", "HF generate", "HF prompt lookup"))
    every = course_exits(lm, list(range(1, lm.n_layers)))
    result = {
        "exact": same / total,
        "speedup": speed.speedup("self-speculative"),
        "speedup_vs_hf_generate": speed.speedup("self-speculative", "HF generate"),
        "speedup_vs_hf_prompt_lookup": speed.speedup("self-speculative", "HF prompt lookup"),
        "tokens_per_second": {"plain": speed.tokens_per_second("no exits"),
                              "self_speculative": speed.tokens_per_second("self-speculative"),
                              "hf_generate": speed.tokens_per_second("HF generate"),
                              "hf_prompt_lookup": speed.tokens_per_second("HF prompt lookup")},
        "acceptance": accepted / drafted if drafted else None,
        "tokens_per_round": total / rounds,
        "layers_per_token": rows / total,
        "flops_ratio": flops_spec / flops_plain,
        "draft_exit": ee.exit_layers[settings.draft_exit],
        "threshold": settings.threshold,
        "max_draft": settings.max_draft,
        "draft_vocab": None if settings.draft_vocab is None else len(settings.draft_vocab),
        "bpc_final": eelib.evaluate_text(lm, heldout_text("all")).bits_per_character,
        "agreement_by_layer": list(agreement_by_layer(every, heldout_text("test"))[:-1]),
        "early_exit": chapter7_figures(lm, prompts, args),
    }
    result["seconds"] = time.perf_counter() - started
    return result


def chapter7_figures(lm, prompts, args) -> dict:
    """Early-exit generation (chapter 7): exits after layers 2 and 4 at the target agreement, three deciders."""
    ee = course_exits(lm, (2, 4))
    cal_text = heldout_text("calibration")
    outputs = token_exit_outputs(ee, cal_text, max_tokens=args.calibration_tokens).outputs
    costs = token_exit_costs(ee, 32 + args.new_tokens // 2)
    policy = calibrate(outputs, costs, max_accuracy_drop=1 - args.target).policy
    del outputs
    classifiers = train_exit_classifiers(ee, cal_text, max_tokens=args.calibration_tokens)
    figures = {}
    for decider in ("max_prob", "saturation", "classifier"):
        if decider == "max_prob":
            kwargs, thresholds = dict(policy=policy, gate=None), list(policy.thresholds)
        else:
            gate = calibrate_gate(ee, cal_text, decider, target=args.target, classifiers=classifiers,
                                  max_tokens=args.calibration_tokens).gate
            kwargs, thresholds = dict(policy=None, gate=gate), list(gate.thresholds)
        forced = teacher_forced_eval(ee, prompts, kwargs["policy"], max_new_tokens=args.new_tokens,
                                     gate=kwargs["gate"])
        speed = measure_generation_speed(ee, prompts, kwargs["policy"], max_new_tokens=args.new_tokens,
                                         repeats=args.repeats, loops=("early exit", "no exits"), gate=kwargs["gate"])
        figures[decider] = {"thresholds": thresholds, "agreement": forced.agreement,
                            "avg_exit_layer": forced.avg_exit_layer, "avg_layers": forced.avg_layers_computed,
                            "oracle_avg_layers": forced.oracle_avg_layers, "exit_shares": list(forced.exit_shares),
                            "speedup": speed.speedup("early exit")}
    return {"exit_layers": [2, 4], "target_agreement": args.target, "calibration_tokens": args.calibration_tokens,
            **figures}


TABLE_HEADER = ("| model | exact | speedup | vs HF generate | vs HF prompt lookup | tokens/s plain / self-speculative "
                "| acceptance | tokens per round | draft (layer, threshold, max, vocabulary) | bpc final "
                "| agreement at layer 2 | chapter 7 at 95%: speedup max_prob / saturation / classifier |")


def readme_rows(results: dict) -> list[str]:
    """The README's table of this benchmark, one row per model (a test checks that the README shows these)."""
    rows = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    for name, m in results["models"].items():
        acc = "-" if m["acceptance"] is None else f"{m['acceptance']:.2f}"
        vocab = "all" if m["draft_vocab"] is None else f"{m['draft_vocab']:,}"
        ch7 = m["early_exit"]
        rows.append(f"| {name} | {m['exact']:.3f} | {m['speedup']:.2f}x | {m['speedup_vs_hf_generate']:.2f}x | "
                    f"{m['speedup_vs_hf_prompt_lookup']:.2f}x | {m['tokens_per_second']['plain']:.0f} / "
                    f"{m['tokens_per_second']['self_speculative']:.0f} | {acc} | {m['tokens_per_round']:.2f} | "
                    f"{m['draft_exit']}, {m['threshold']:g}, {m['max_draft']}, {vocab} | {m['bpc_final']:.3f} | "
                    f"{100 * m['agreement_by_layer'][1]:.1f}% | {ch7['max_prob']['speedup']:.2f}x / "
                    f"{ch7['saturation']['speedup']:.2f}x / {ch7['classifier']['speedup']:.2f}x |")
    return rows


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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {name: measure_model(name, args) for name in args.models.split(",")}
    results = {
        "models": models,
        "prompts": args.prompts, "prompt_tokens": 32, "new_tokens": args.new_tokens, "repeats": args.repeats,
        "threads": args.threads,
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), "
                    f"torch {torch.__version__}",
    }
    tmp = args.out.with_suffix(".tmp")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print("\n".join(readme_rows(results)))
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
