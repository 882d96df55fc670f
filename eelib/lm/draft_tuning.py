"""Choosing the drafts' settings for speed: the defaults of the speculative loops, calibrated.

For each setting (draft exit, threshold, most drafts per round, draft vocabulary; for the dynamic draft
one threshold per exit) the loop runs on prompts from the **calibration** half of the held-out text,
and its speed against the plain loop is either **measured** (interleaved runs, :func:`eelib.lm.speed.
measure_generation_speed`) or **predicted** by a :class:`~eelib.lm.speed.SpeedModel` from the loop's
trace (noise-free: a busy machine does not change which setting wins, only the measured times). The
fastest setting per draft layer, and the fastest dynamic draft, are saved beside a shipped course
model's exit heads (``speculative.json``) by ``python -m eelib.lm.draft_tuning --model course-ee``.
Chapter 8 and the benchmark measure on the **test** half.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from eelib._util.progress import tqdm
from eelib.lm.decoder import Generation
from eelib.lm.exits import HEADS_FOLDER, EarlyExitLM
from eelib.lm.generate import early_exit_generate
from eelib.lm.model import _SHIPPED, course_model_path
from eelib.lm.speculative import (PROMPT_TOKENS, SETTINGS_FILE, calibration_prompts, dynamic_speculative_generate,
                                  self_speculative_generate)
from eelib.lm.speed import SpeedModel, fit_speed_model, measure_generation_speed

ENTROPY_GRID = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)  # nats, for the dynamic draft's per-exit thresholds
MAX_PROB_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _summary(runs: Sequence[Generation]) -> dict:
    judged = sum(r.compared for g in runs for r in g.rounds)
    accepted = sum(g.accepted for g in runs)
    return dict(tokens_per_round=round(sum(len(g.steps) for g in runs) / sum(len(g.rounds) for g in runs), 4),
                acceptance=round(accepted / judged, 4) if judged else None)


def _predicted_speedup(model: SpeedModel, plain: Sequence[Generation], runs: Sequence[Generation]) -> float:
    return sum(model.seconds(g) for g in plain) / sum(model.seconds(g) for g in runs)


def calibrate_speculative(ee: EarlyExitLM, prompts: Sequence[torch.Tensor], *, thresholds: Sequence[float] = (
        0.0, 0.2, 0.4, 0.6, 0.8), max_drafts: Sequence[int] = (2, 4, 8), draft_vocabs: Sequence[int | None] = (None, 1024),
        max_new_tokens: int = 64, repeats: int = 2, model: SpeedModel | None = None, progress: bool = True) -> dict:
    """The fixed-exit draft for every early exit of ``ee`` and every setting of the grid; the fastest per exit layer.

    Speed: with ``model``, predicted from each run's trace against the plain loop's (both by ``model``);
    without, measured (each setting's loop and the plain loop run in turn on the same prompts, the fastest of
    ``repeats`` runs counting).

    Returns:
        ``{"by_layer": {layer: {threshold, max_draft, draft_vocab, speedup, tokens_per_round, acceptance}},
        "grid": [one row per setting], "speed": "predicted" or "measured"}``.
    """
    plain = [early_exit_generate(ee, p, None, max_new_tokens=max_new_tokens) for p in prompts] if model else []
    rows = []
    grid = [(k, t, m, v) for k in range(len(ee.exit_layers)) for t in thresholds for m in max_drafts
            for v in draft_vocabs]
    for k, t, m, v in tqdm(grid, desc="self-speculative settings", disable=not progress):
        settings = dict(draft_exit=k, threshold=t, max_draft=m, draft_vocab=v)
        runs = [self_speculative_generate(ee, p, max_new_tokens=max_new_tokens, **settings) for p in prompts]
        if model is not None:
            speedup = _predicted_speedup(model, plain, runs)
        else:
            speedup = measure_generation_speed(ee, prompts, None, max_new_tokens=max_new_tokens, repeats=repeats,
                                               loops=("no exits", "self-speculative"),
                                               speculative=settings).speedup("self-speculative")
        rows.append(dict(layer=ee.exit_layers[k], threshold=t, max_draft=m, draft_vocab=v, speedup=round(speedup, 4),
                         **_summary(runs)))
    by_layer = {}
    for row in rows:
        best = by_layer.get(row["layer"])
        if best is None or row["speedup"] > best["speedup"]:
            by_layer[row["layer"]] = {key: row[key] for key in ("threshold", "max_draft", "draft_vocab", "speedup",
                                                               "tokens_per_round", "acceptance")}
    return dict(by_layer=by_layer, grid=rows, speed="predicted" if model else "measured")


def calibrate_dynamic(ee: EarlyExitLM, prompts: Sequence[torch.Tensor], model: SpeedModel, *,
                      exit_layers: Sequence[int] = (1, 2, 4), measure: str = "entropy",
                      grid: Sequence[float] | None = None, max_drafts: Sequence[int] = (4, 6, 8),
                      draft_vocab: int | None = 1024, max_new_tokens: int = 64, sweeps: int = 2,
                      progress: bool = True) -> dict:
    """The dynamic draft's thresholds, one per exit, for speed predicted by ``model`` (coordinate descent:
    each exit's threshold in turn over ``grid``, the others fixed, ``sweeps`` times; then ``max_draft``).

    Returns ``{exit_layers, measure, thresholds, max_draft, draft_vocab, speedup, tokens_per_round, acceptance}``.
    """
    grid = tuple(grid or (ENTROPY_GRID if measure == "entropy" else MAX_PROB_GRID))
    plain = [early_exit_generate(ee, p, None, max_new_tokens=max_new_tokens) for p in prompts]
    cache: dict[tuple, tuple[float, list]] = {}

    def speed(ths, m):
        key = (tuple(ths), m)
        if key not in cache:
            runs = [dynamic_speculative_generate(ee, p, max_new_tokens=max_new_tokens, exit_layers=exit_layers,
                                                 measure=measure, thresholds=list(ths), max_draft=m,
                                                 draft_vocab=draft_vocab) for p in prompts]
            cache[key] = (_predicted_speedup(model, plain, runs), runs)
        return cache[key][0]

    start = 0.5 if measure == "entropy" else 0.9  # cautious: few drafts
    ths, m = [start] * len(exit_layers), max_drafts[len(max_drafts) // 2]
    steps = [(i, t) for _ in range(sweeps) for i in range(len(exit_layers)) for t in grid]
    bar = tqdm(total=len(steps) + len(max_drafts), desc="dynamic draft thresholds", disable=not progress)
    for _ in range(sweeps):
        for i in range(len(exit_layers)):
            best = max(grid, key=lambda t: (speed(ths[:i] + [t] + ths[i + 1:], m), -abs(t - ths[i])))
            ths[i] = best
            bar.update(len(grid))
    m = max(max_drafts, key=lambda md: speed(ths, md))
    bar.update(len(max_drafts))
    bar.close()
    value, runs = cache[(tuple(ths), m)]
    return dict(exit_layers=list(exit_layers), measure=measure, thresholds=ths, max_draft=m, draft_vocab=draft_vocab,
                speedup=round(value, 4), **_summary(runs))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eelib.lm.draft_tuning --model course-ee``: choose and save the drafts' defaults."""
    import argparse

    from eelib._util.cache import save_json
    from eelib.lm.exits import course_exits
    from eelib.lm.model import load_lm

    parser = argparse.ArgumentParser(prog="python -m eelib.lm.draft_tuning", description=main.__doc__)
    parser.add_argument("--model", default="course-ee", choices=sorted(_SHIPPED))
    parser.add_argument("--prompts", type=int, default=6, help=f"prompts of {PROMPT_TOKENS} tokens, calibration half")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the benchmark)")
    parser.add_argument("--out", default=None, help="file to write (default: speculative.json beside the heads)")
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.new_tokens < 1:
        parser.error("--prompts and --new-tokens must be positive integers")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lm = load_lm(args.model, device="cpu")
    ee = course_exits(lm, list(range(1, lm.n_layers // 2 + 1)))  # draft exits up to half the depth
    prompts = calibration_prompts(lm, args.prompts)
    model = fit_speed_model(ee, prompts[:2], max_new_tokens=args.new_tokens)
    result = calibrate_speculative(ee, prompts, max_new_tokens=args.new_tokens, model=model)
    best = max((calibrate_dynamic(ee, prompts, model, measure=m, max_new_tokens=args.new_tokens)
                for m in ("entropy", "max_prob")), key=lambda r: r["speedup"])
    result.update(dynamic=best, prompts=args.prompts, prompt_tokens=PROMPT_TOKENS, new_tokens=args.new_tokens,
                  threads=args.threads, seconds=round(time.perf_counter() - started, 1),
                  speed_model=dict(step_us=round(model.step * 1e6, 2), round_us=round(model.round * 1e6, 2)),
                  note="speedup: tokens per second against eelib's plain greedy loop, predicted by the speed model "
                       "(eelib.lm.speed, primitives and overheads measured on this machine) from each run's trace, on "
                       "prompts from the calibration half of the held-out text")
    file = args.out or course_model_path(args.model) / HEADS_FOLDER / SETTINGS_FILE
    save_json(result, file, indent=1)
    for layer, row in result["by_layer"].items():
        print(f"layer {layer}: {row}")
    print(f"dynamic: {best}")
    print(f"written to {file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
