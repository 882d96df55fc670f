"""Benchmark: early-exit generation with the course GPT-2, measured (agreement, layers, FLOPs, time).

The course model (8 layers) with its shipped trained exit heads after ``--exits`` (default layers
2 and 4), on the CPU, batch size 1, greedy decoding:

1. **Calibration.** The policy's thresholds (``--measure``, one shared threshold) are chosen with
   :func:`eelib.policies.calibrate` on the first ``--calibration-tokens`` tokens of the
   calibration half of the held-out text (the first half of Tiny Shakespeare's last 10%), for
   ``--target`` agreement with the full model's top-1 token.
2. **Prompts.** ``--prompts`` prompts of ``--prompt-tokens`` tokens, taken at evenly spaced
   places of the *test* half (the second half of the last 10%). For each, the full model's
   greedy continuation of ``--new-tokens`` tokens (our decoding loop without exits; checked equal
   to Hugging Face ``generate``).
3. Results (keys of ``benchmarks/results/gpt2_exits.json``):

   * ``agreement``: fraction of positions where early-exit decoding, teacher-forced on the full
     model's continuation, predicts the same token as the full model
     (:func:`eelib.lm.generate.teacher_forced_eval`);
   * ``avg_layers``: mean layers **computed** per token in that run. The key/value cache is
     filled lazily (``kv="lazy"``): the layers a token skipped run later, batched with the next
     token that goes deeper, so they count. ``avg_exit_layer`` is the mean layer after which a
     prediction left (the layers run before it was out); ``oracle_avg_layers``: the oracle's exit
     layer on the same exits and tokens (each token's earliest exit from which every later exit
     agrees with the final one); ``copy_kv``: the same figures with CALM's copy-up instead (the
     skipped layers are not run, their keys and values are computed from the exited state);
   * ``ideal_speedup``: FLOPs of generation without exits / FLOPs of early-exit generation
     (``FlopCounterMode``, free-running, prompt processing, exit heads and the deferred layers
     included);
   * ``speedup``: measured tokens per second of early-exit generation / the same loop without
     exits (whole calls, prompt included; the fastest of ``--repeats`` interleaved runs per
     prompt); ``speedup_vs_hf_generate``: the same against Hugging Face ``generate`` (greedy,
     KV cache);
   * details: thresholds, exit shares, calibration agreement, the never-exit loop's time
     (every head and decision paid, nothing skipped), hardware.

Run: ``python benchmarks/gpt2_exits.py`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

import eelib
from eelib._util.cache import save_json
from eelib.lm.model import encode
from eelib.lm.exits import course_exits, heldout_text, token_exit_outputs
from eelib.lm.generate import early_exit_generate, teacher_forced_eval, token_exit_costs
from eelib.lm.speed import measure_generation_speed
from eelib.policies import ExitPolicy, calibrate

RESULTS = Path(__file__).resolve().parent / "results" / "gpt2_exits.json"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exits", default="2,4", help="layers carrying early exits (comma-separated)")
    parser.add_argument("--measure", default="max_prob", choices=["max_prob", "entropy", "margin", "patience"])
    parser.add_argument("--target", type=float, default=0.95, help="agreement to calibrate for")
    parser.add_argument("--per-exit", action="store_true", help="calibrate one threshold per exit (default: shared)")
    parser.add_argument("--calibration-tokens", type=int, default=8000)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per prompt and loop (the fastest counts)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = eelib.load_lm("course", device="cpu")
    ee = course_exits(lm, tuple(int(x) for x in args.exits.split(",")))
    n = lm.n_layers

    cal_out = token_exit_outputs(ee, heldout_text("calibration"), max_tokens=args.calibration_tokens).outputs
    mean_context = args.prompt_tokens + args.new_tokens // 2
    costs = token_exit_costs(ee, mean_context)
    cal = calibrate(cal_out, costs, measure=args.measure, max_accuracy_drop=1 - args.target,
                    per_exit=args.per_exit)
    policy: ExitPolicy = cal.policy
    del cal_out

    ids = encode(lm, heldout_text("test"))
    starts = torch.linspace(0, len(ids) - args.prompt_tokens - 1, args.prompts).long().tolist()
    prompts = [ids[s:s + args.prompt_tokens] for s in starts]

    lazy = teacher_forced_eval(ee, prompts, policy, max_new_tokens=args.new_tokens, kv="lazy")
    copy = teacher_forced_eval(ee, prompts, policy, max_new_tokens=args.new_tokens, kv="copy")
    equals_hf, flops_full, flops_early, flops_copy, free_exit_layers, free_same = True, 0, 0, 0, 0.0, 0
    for p in prompts:
        full = early_exit_generate(ee, p, None, max_new_tokens=args.new_tokens, count_flops=True)
        hf = lm.model.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               pad_token_id=lm.tokenizer.eos_token_id)[0, len(p):].tolist()
        equals_hf &= hf == full.tokens
        early = early_exit_generate(ee, p, policy, max_new_tokens=args.new_tokens, count_flops=True)  # free-running
        flops_full += full.flops
        flops_early += early.flops
        flops_copy += early_exit_generate(ee, p, policy, max_new_tokens=args.new_tokens, count_flops=True,
                                          kv="copy").flops
        free_exit_layers += early.avg_exit_layer * len(early.steps)
        free_same += sum(a == b for a, b in zip(early.tokens, full.tokens))
    n_tok = lazy.tokens
    speed = measure_generation_speed(ee, prompts, policy, max_new_tokens=args.new_tokens, repeats=args.repeats)
    speed_copy = measure_generation_speed(ee, prompts, policy, max_new_tokens=args.new_tokens, repeats=args.repeats,
                                          kv="copy", loops=("early exit", "no exits"))
    results = {
        "n_layers": n,
        "exit_layers": list(ee.exit_layers),
        "measure": args.measure,
        "thresholds": list(policy.thresholds),
        "target_agreement": args.target,
        "calibration_agreement": cal.val.accuracy,
        "calibration_tokens": args.calibration_tokens,
        "per_exit_thresholds": args.per_exit,
        "agreement": lazy.agreement,
        "avg_layers": lazy.avg_layers_computed,
        "avg_exit_layer": lazy.avg_exit_layer,
        "oracle_avg_layers": lazy.oracle_avg_layers,
        "kv": "lazy",
        "exit_shares": list(lazy.exit_shares),
        "copy_kv": {"agreement": copy.agreement, "avg_layers": copy.avg_layers_computed,
                    "avg_exit_layer": copy.avg_exit_layer, "ideal_speedup": flops_full / flops_copy,
                    "speedup": speed_copy.speedup("early exit")},
        "free_running_avg_exit_layer": free_exit_layers / n_tok,
        "free_running_same_token_share": free_same / n_tok,
        "ideal_speedup": flops_full / flops_early,
        "flops_full": flops_full,
        "flops_early": flops_early,
        "speedup": speed.speedup("early exit"),
        "speedup_vs_hf_generate": speed.speedup("early exit", "HF generate"),
        "never_exit_overhead": speed.seconds["never exit"] / speed.seconds["no exits"] - 1,
        "tokens_per_second": {loop: speed.tokens_per_second(loop) for loop in speed.seconds},
        "no_exit_loop_equals_hf_generate": equals_hf,
        "prompts": args.prompts, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "repeats": args.repeats, "threads": args.threads,
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), "
                    f"torch {torch.__version__}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_json(results, args.out)
    print(f"exits after layers {list(ee.exit_layers)} of {n}; {args.measure} thresholds "
          f"{', '.join(f'{t:.3f}' for t in policy.thresholds)} (calibration agreement {cal.val.accuracy:.3f})")
    print(f"{'agreement':>10} {'avg_layers':>10} {'exit layer':>10} {'oracle':>7} {'ideal':>7} {'speedup':>8} {'vs HF':>7}")
    print(f"{results['agreement']:10.3f} {results['avg_layers']:10.2f} {results['avg_exit_layer']:10.2f} "
          f"{results['oracle_avg_layers']:7.2f} "
          f"{results['ideal_speedup']:6.2f}x {results['speedup']:7.2f}x {results['speedup_vs_hf_generate']:6.2f}x")
    print(f"copy-up instead of lazy filling: agreement {copy.agreement:.3f}, {copy.avg_layers_computed:.2f} layers, "
          f"ideal {flops_full / flops_copy:.2f}x, speedup {speed_copy.speedup('early exit'):.2f}x")
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
