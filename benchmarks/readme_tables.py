"""The README's result tables, rendered from the results files, so that no figure is copied by hand.

Each result table in ``README.md`` sits between two markers::

    <!-- table: NAME -->
    | ... rendered from the results file ... |
    <!-- /table -->

A paragraph whose figures come from a results file sits between ``<!-- text: NAME -->`` and
``<!-- /text -->`` the same way. ``python benchmarks/readme_tables.py`` rewrites every marked table from its source
(``benchmarks/results/*.json``, or a file shipped with eelib); ``--check`` only says which tables
differ and exits with status 1 if any does. ``tests/test_readme_results.py`` runs the check, and
also fails when a table of the README's results sections has no marker. After a benchmark run:
``python benchmarks/readme_tables.py`` and commit the JSON and the README together.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- (?P<kind>table|text): (?P<name>[a-z0-9_]+) -->\n(?P<body>.*?)^<!-- /(?P=kind) -->$",
                    re.M | re.S)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def times(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def exit_label(name: str) -> str:
    return "final" if name == "final" else f"`{name}`"


# --- the tables ----------------------------------------------------------------------------

def course_ee_agreement() -> str:
    info = _load(ROOT / "eelib" / "models" / "shakespeare-gpt2-ee" / "exit_heads" / "training.json")
    distill = _load(ROOT / "eelib" / "models" / "shakespeare-gpt2-ee" / "exit_heads" / "distill.json")
    return table(["layer", *map(str, range(1, len(info["agreement_by_layer"]) + 1))],
                 [["`course-ee`, jointly trained exits: test text", *map(pct, info["agreement_by_layer"])],
                  ["`course-ee`, shipped heads (distilled on its own text): test text",
                   *map(pct, distill["text_agreement_after"])],
                  ["`course-ee`, jointly trained exits: its own continuations", *map(pct, distill["own_agreement_before"])],
                  ["`course-ee`, shipped heads: its own continuations", *map(pct, distill["own_agreement_after"])],
                  ["`course` + its tuned heads: test text", *map(pct, info["course_agreement_by_layer"])]])


def chapter1() -> str:
    rows = _load(RESULTS / "course_models.json")["chapter1"]
    out = []
    for r in rows.values():
        ratio = r["gradient_norm_first_over_last_conv"]
        out.append(["residual" if r["residual"] else "plain", str(r["layers"]), f"{r['parameters']:,}",
                    f"{r['train_loss_last_epoch']:.3f}", pct(r["test_accuracy"]),
                    f"{ratio:,.1f}x" if ratio < 100 else f"{ratio:,.0f}x", f"{r['train_seconds']:.0f} s"])
    return table(["network", "layers", "parameters", "training loss, last epoch (nats)",
                  "test accuracy (1,000 digits)", "gradient norm, first layer / last conv, at init",
                  "training time (1 thread)"], out)


def chapter2() -> str:
    c = _load(RESULTS / "course_models.json")["chapter2"]
    rows = [[exit_label(name), pct(cost, 0), pct(j), pct(f)]
            for name, cost, j, f in zip(c["exits"], c["relative_flops"], c["joint"], c["frozen"])]
    return table(["exit", "cost", "joint training", "frozen backbone, heads only"], rows)


def chapter4() -> str:
    c = _load(RESULTS / "course_models.json")["chapter4"]
    p = c["policies"]
    names = {"max_prob": "max probability", "entropy": "entropy", "margin": "margin", "patience": "patience"}
    rows = []
    for measure, r in p.items():
        t = r["threshold"]
        shown = {"entropy": f"{t:.3f} nats", "patience": f"{t:.0f} exits agree"}.get(measure, f"{t:.3f}")
        rows.append([names[measure], shown, pct(r["val_accuracy"]), pct(r["test_accuracy"]),
                     pct(r["test_flops_saved"])])
    rows.append(["oracle (earliest exit that is right)", "—", "—", pct(c["oracle"]["test_accuracy"]),
                 pct(c["oracle"]["test_flops_saved"])])
    rows.append(["final exit only", "—", pct(c["final_exit"]["val_accuracy"]), pct(c["final_exit"]["test_accuracy"]),
                 "0%"])
    return table(["measure", "threshold", "validation accuracy", "test accuracy", "test FLOPs saved"], rows)


def resnet_exits() -> str:
    r = _load(RESULTS / "resnet_exits.json")
    return table(["accuracy, final exit", "accuracy, policy", "FLOPs saved", "FLOPs saved, oracle",
                  "ideal speedup", "speedup, batch 1", "speedup, batch 256"],
                 [[f"{r['accuracy_full']:.3f}", f"{r['accuracy_policy']:.3f}", f"{r['flops_saved']:.3f}",
                   f"{r['oracle_flops_saved']:.3f}", times(r["ideal_speedup"]), times(r["speedup_batch1"]),
                   times(r["speedup_batch256"])]])


def resnet_exits_overhead() -> str:
    r = _load(RESULTS / "resnet_exits.json")
    return table(["never-exit overhead, batch 1", "never-exit overhead, batch 256",
                  "ideal speedup on the batch-1 digits", "latency-ideal speedup, batch 256"],
                 [[f"{100 * r['never_exit_overhead_batch1']:+.0f}%", f"{100 * r['never_exit_overhead_batch256']:+.0f}%",
                   times(r["details"]["batch1"]["ideal"]), times(r["latency_ideal_speedup_batch256"])]])


def rejection_guarantee() -> str:
    r = _load(RESULTS / "rejection.json")
    rows = []
    for k, g in enumerate(r["details"]["guarantee_by_split"].values()):
        label = f"{g['calibration']:,} / {g['test']:,}"
        if k == 0:  # the first split size is the default, the one of the top-level figures
            label += " (the default, `violation_rate` in the JSON)"
        rows.append([label, f"{g['violation_rate']:.3f}", f"{g['pool_violation_rate']:.3f}",
                     pct(g["test_risk_mean"], 2), pct(g["pool_risk_mean"], 2), pct(g["coverage"])])
    return table(["calibration / test digits", "violation rate: test risk above alpha",
                  "risk above alpha on the whole pool", "mean test risk", "mean pool risk", "mean test coverage"], rows)


def rejection_policies() -> str:
    r = _load(RESULTS / "rejection.json")
    full, budget = r["full_flops"], r["details"]["budget_fraction_of_full"]
    rows = []
    for key, label in (("combined", f"early exit + reject (combined, budget {pct(budget, 0)})"),
                       ("exit_only", f"early exit only (budget {pct(budget, 0)})"),
                       ("reject_only", "reject only (full network)")):
        coverage = r[f"{key}_coverage"]
        rows.append([label, pct(r[f"{key}_accuracy"], 2), "100%" if coverage == 1 else pct(coverage),
                     pct(r[f"{key}_avg_flops"] / full)])
    return table(["policy (500 / 1,500 splits)", "accuracy of the accepted digits", "coverage",
                  "average FLOPs (% of the full network)"], rows)


def chapter6() -> str:
    c = _load(RESULTS / "course_models.json")["chapter6"]
    layers = [str(n) for n in c["layers"]]
    layers[-1] += " (final)"
    return table(["layer", *layers], [["logit lens (`ln_f` + `lm_head`)", *map(pct, c["logit_lens"])],
                                      ["trained exit heads (shipped)", *map(pct, c["trained_heads"])]])


def gpt2_exits() -> str:
    r = _load(RESULTS / "gpt2_exits.json")
    return table(["n_layers", "agreement", "avg_layers (computed)", "mean exit layer", "oracle_avg_layers",
                  "ideal_speedup", "speedup", "speedup_vs_hf_generate"],
                 [[str(r["n_layers"]), f"{r['agreement']:.3f}", f"{r['avg_layers']:.2f}", f"{r['avg_exit_layer']:.2f}",
                   f"{r['oracle_avg_layers']:.2f}", times(r["ideal_speedup"]), times(r["speedup"]),
                   times(r["speedup_vs_hf_generate"])]])


def self_speculative() -> str:
    r = _load(RESULTS / "self_speculative.json")
    rows = []
    for name, m in r["models"].items():
        fixed, dyn = m["loops"][1], m["loops"][2]
        f, d = m["fixed"], m["dynamic"]
        rows.append([name, " / ".join(f"{m['exact'][k]:.3f}" for k in ("self-speculative", "dynamic speculative")),
                     times(m["speedup"]), times(m["dynamic_speedup"]),
                     f"{m['loops'][0]['tokens_per_second']:.0f} / {fixed['tokens_per_second']:.0f} / "
                     f"{dyn['tokens_per_second']:.0f}",
                     f"{fixed['acceptance']:.2f} / {dyn['acceptance']:.2f}",
                     f"{fixed['tokens_per_round']:.2f} / {dyn['tokens_per_round']:.2f}",
                     f"{f['draft_layer']}, {f['threshold']:g}, {f['max_draft']}",
                     f"{d['exit_layers']}, {d['measure']} {[round(t, 2) for t in d['thresholds']]}, {d['max_draft']}",
                     times(m["speedup_vs_hf_generate"]), f"{m['bpc_final']:.3f}",
                     " / ".join(pct(m["own_agreement_by_layer"][l - 1], 0) for l in (1, 2, 4))])
    return table(["model", "exact (fixed / DSSD)", "speedup, fixed exit", "speedup, DSSD",
                  "tokens/s plain / fixed / DSSD", "acceptance rate (fixed / DSSD)", "tokens per round (fixed / DSSD)",
                  "fixed draft (layer, max_prob, max)", "DSSD (exits, measure, thresholds, max)", "fixed vs HF generate",
                  "bpc final", "own-text agreement, layers 1 / 2 / 4"], rows)


def self_speculative_loops() -> str:
    """Every loop and setting of the benchmark, measured beside the speed model's prediction."""
    r = _load(RESULTS / "self_speculative.json")
    rows = []
    for name, m in r["models"].items():
        for row in m["loops"]:
            predicted = row.get("predicted_tokens_per_second")
            rel = None if predicted is None else row["predicted_speedup"] / row["speedup"]
            rows.append([name, row["loop"], row["setting"], f"{row['tokens_per_second']:.0f}",
                         "—" if predicted is None else f"{predicted:.0f}",
                         "—" if predicted is None else f"{row['ratio']:.2f}", times(row["speedup"]),
                         "—" if predicted is None else times(row["predicted_speedup"]),
                         "—" if rel is None else f"{rel:.2f}",
                         "—" if row.get("acceptance") is None else f"{row['acceptance']:.2f}",
                         "—" if row.get("tokens_per_round") is None else f"{row['tokens_per_round']:.2f}"])
    return table(["model", "loop", "setting", "measured tokens/s", "predicted tokens/s", "predicted / measured",
                  "speedup vs plain, measured", "speedup, predicted", "predicted / measured speedup",
                  "acceptance rate", "tokens per round"], rows)


def self_speculative_projection() -> str:
    """The projection to real shapes: speedup at a few acceptance rates, both regimes."""
    p = _load(RESULTS / "self_speculative.json")["projection"]
    picks = [a for a in (0.4, 0.6, 0.8, 0.9) if a in p["acceptance"]]
    rows = []
    for name, m in p["models"].items():
        rows.append([name, str(m["n_layers"]), f"{m['head_over_block_flops']:.2f}",
                     *[times(m["cpu"][p["acceptance"].index(a)]) for a in picks],
                     *[times(m["gpu"][p["acceptance"].index(a)]) for a in picks]])
    return table(["model", "blocks", "head / block FLOPs", *[f"this CPU, a = {a}" for a in picks],
                  *[f"GPU-like, a = {a}" for a in picks]], rows)


def self_speculative_text() -> str:
    """The benchmark's goals, met or not, from ``self_speculative.json``."""
    r = _load(RESULTS / "self_speculative.json")
    m = r["models"]["course-ee"]
    priced = [(name, row) for name, mm in r["models"].items() for row in mm["loops"]
              if row.get("ratio") is not None and row["loop"] != "plain"]
    rel = lambda row: row["predicted_speedup"] / row["speedup"]  # noqa: E731
    within = [p for p in priced if abs(rel(p[1]) - 1) <= 0.10]
    within_abs = [p for p in priced if abs(p[1]["ratio"] - 1) <= 0.10]
    worst_name, worst = max(priced, key=lambda p: abs(rel(p[1]) - 1))
    best = max(m["speedup"], m["dynamic_speedup"])
    exact = all(v == 1.0 for mm in r["models"].values() for v in mm["exact"].values())
    steps = {name: mm["primitives"]["step_overhead_us"] for name, mm in r["models"].items()}
    rounds = {name: mm["primitives"]["round_overhead_us"] for name, mm in r["models"].items()}
    met = lambda ok: "met" if ok else "not met"  # noqa: E731
    return (f"Goals: every exact loop token for token equal to `generate` ({met(exact)}). The speed model within 10% "
            f"of every measured loop: {len(within)} of {len(priced)} rows for the speedup against the plain loop "
            f"timed beside it, {len(within_abs)} of {len(priced)} for the tokens per second themselves "
            f"({met(len(within) == len(priced))}; the furthest: {worst['loop']}, {worst['setting']} on `{worst_name}`, "
            f"predicted / measured speedup {rel(worst):.2f}). What the model misses is the machine's load: the "
            f"overheads are fitted on one timed run of the plain loop and one of the fixed-exit loop, and a busy moment "
            f"during those runs lands in them (per position and per round: "
            + ", ".join(f"{steps[n]:.0f} µs and {rounds[n]:.0f} µs on `{n}`" for n in steps)
            + "); the rows of a pass are timed minutes apart, so their tokens per second move with the load too. "
            f"The fastest exact loop on `course-ee` at least 1.2x "
            f"the plain loop: {times(best)} ({met(best >= 1.2)}): on this CPU a block call of k + 1 rows costs more "
            f"than one (`row_scale` in the results file), so the verification is not free, and a round that yields "
            f"{m['loops'][1]['tokens_per_round']:.2f} tokens pays for the positions it rejects. Measured under a load "
            f"average of {r['load_average'][0]:.1f} at the start and {r['load_average'][1]:.1f} at the end (2 cores, "
            f"other work on the machine).\n")


def llm_rejection() -> str:
    """Chapter 9's benchmark (``benchmarks/llm_rejection.py``): one row per model and method."""
    r = _load(RESULTS / "llm_rejection.json")
    rows = []
    for name, m in r["models"].items():
        c, a, e = m["consistency"], m["abstain"], m["exit_or_reject"]
        for method in ("naive", "guaranteed"):
            rows.append([name, f"consistency, {method}", f"{c[method]['violation_rate']:.2f}", pct(c[method]["test_risk_mean"], 2),
                         f"{pct(c[method]['coverage'])} leave early", pct(c[method]["relative_flops"], 0), "—"])
        for method in ("naive", "guaranteed"):
            rows.append([name, f"abstain, {method}", f"{a[method]['violation_rate']:.2f}", pct(a[method]["test_risk_mean"]),
                         f"{pct(a[method]['coverage'])} answered", "—", "—"])
        for mode, label in (("combined", "exit or reject"), ("exit_only", "exit only"), ("reject_only", "reject only")):
            rows.append([name, label, "—", pct(e[mode]["risk"]), f"{pct(e[mode]['coverage'])} answered",
                         pct(e[mode]["relative_flops"], 0), pct(1 - e[mode]["over_budget_rate"], 0)])
    return table(["model", "method", "violation rate", "mean test risk (disagreement / wrong answers)",
                  "coverage", "FLOPs (% of no exits)", "splits within the budget"], rows)


def llm_rejection_text() -> str:
    """Chapter 9's goals, met or not, with every figure from ``llm_rejection.json``."""
    r = _load(RESULTS / "llm_rejection.json")
    st, models = r["settings"], r["models"]
    delta, n = st["delta"], st["splits"]
    error = 2 * (delta * (1 - delta) / n) ** 0.5  # two binomial standard deviations over the splits
    met = lambda ok: "met" if ok else "not met"  # noqa: E731
    cons = " and ".join(f"{m['consistency']['guaranteed']['violation_rate']:.2f} (`{name}`)" for name, m in models.items())
    naive = " and ".join(f"{m['consistency']['naive']['violation_rate']:.2f}" for m in models.values())
    abst = " and ".join(f"{m['abstain']['guaranteed']['violation_rate']:.2f}" for m in models.values())
    ok_cons = all(m["consistency"]["guaranteed"]["violation_rate"] <= delta + error for m in models.values())
    ok_abst = all(m["abstain"]["guaranteed"]["violation_rate"] <= delta + error for m in models.values())
    within = " and ".join(pct(1 - m["exit_or_reject"]["combined"]["over_budget_rate"], 0) for m in models.values())
    ok_budget = all(m["exit_or_reject"]["combined"]["over_budget_rate"] <= 0.05 for m in models.values())
    lower = " and ".join(pct(m["combined_lower_risk_than_exit_only_rate"], 0) for m in models.values())
    flops = " and ".join(pct(m["consistency"]["guaranteed"]["relative_flops"], 0) for m in models.values())
    early = " and ".join(pct(m["consistency"]["guaranteed"]["coverage"]) for m in models.values())
    return (f"Goals of issue 28. The guaranteed consistency threshold's disagreement with the full model was above "
            f"epsilon in {cons} of the {n} splits, within delta = {delta} and its binomial error "
            f"(+{error:.2f}): {met(ok_cons)}; the naive threshold's in {naive}. The abstaining model's guaranteed "
            f"threshold: {abst} ({met(ok_abst)}). Exit or reject stayed within its FLOPs budget on the test tokens in "
            f"{within} of the splits (goal 95%: {met(ok_budget)}) and had a lower selective risk than exit-only at the "
            f"same budget in {lower} of them. Not a saving: with the guarantee {early} of the tokens leave early, yet "
            f"the mean FLOPs per token are {flops} of the model without exits (copy-up): each exit head costs about two "
            f"layers of these small models and most tokens pay both on the way to the end (chapters 7 and 8).\n")


def run_times() -> str:
    """Notebook times (``benchmarks/run_times.py``): one row per chapter, lecture / solution / exercise."""
    r = _load(RESULTS / "run_times.json")
    notebook = re.compile(r"^`(\S+\.ipynb)`$")  # a notebook's row: its path in backquotes
    seconds = {(notebook.match(row["what"]) or [None, row["what"]])[1]: row["seconds"] for row in r["rows"]}
    chapters = sorted({Path(w).stem for w in seconds if w.endswith(".ipynb")})
    rows = [[f"`{ch}`", *(f"{seconds[f'{folder}/{ch}.ipynb']:.0f} s" if f"{folder}/{ch}.ipynb" in seconds else "—"
                          for folder in ("notebooks", "solutions", "exercises"))] for ch in chapters]
    header = ["chapter", "lecture (`notebooks/`)", "solution", "exercise (blank: checks fail)"]
    if (RESULTS / "run_times_busy.json").is_file():  # `run_times.py --busy N`: the lectures on a busy machine
        b = _load(RESULTS / "run_times_busy.json")
        busy = {(notebook.match(row["what"]) or [None, row["what"]])[1]: row["seconds"] for row in b["rows"]}
        header.insert(2, f"lecture, {b['busy_processes']} other busy process(es)")
        for row, ch in zip(rows, chapters):
            row.insert(2, f"{busy[f'notebooks/{ch}.ipynb']:.0f} s" if f"notebooks/{ch}.ipynb" in busy else "—")
    table_text = table(header, rows)
    others = [[w, f"{t:,.0f} s"] for w, t in seconds.items() if not w.endswith(".ipynb")]
    return table_text + "\n" + table(["what", "time"], others)


def benchmark_times() -> str:
    """How long each benchmark and training run took, as its own results file records it."""
    course = _load(RESULTS / "course_models.json")
    spec = _load(RESULTS / "self_speculative.json")
    heads = _load(ROOT / "eelib" / "models" / "shakespeare-gpt2" / "exit_heads" / "training.json")
    rows = [[f"training `{name}` (`benchmarks/train_zoo.py`, 1 thread)", f"{r['train_seconds']:,.0f} s",
             "the shipped file's metadata"] for name, r in course["chapter1"].items()]
    rows += [["`python benchmarks/course_models.py` (1 thread)", f"{course['details']['seconds']:,.0f} s",
              "`course_models.json`"],
             ["`python benchmarks/resnet_exits.py`: the timed passes (1 thread)",
              f"{_load(RESULTS / 'resnet_exits.json')['details']['timing_seconds']:,.0f} s", "`resnet_exits.json`"],
             ["`python benchmarks/rejection.py` (200 splits, 1 thread)",
              f"{_load(RESULTS / 'rejection.json')['details']['seconds']:,.0f} s", "`rejection.json`"]]
    rows += [[f"`python benchmarks/self_speculative.py`, `{name}` (1 thread)", f"{m['seconds']:,.0f} s",
              "`self_speculative.json`"] for name, m in spec["models"].items()]
    llm = _load(RESULTS / "llm_rejection.json")["details"]
    rows.append(["`python benchmarks/llm_rejection.py` (both models, 1 thread)",
                 f"{llm['seconds']:,.0f} s ({llm['cpu_seconds']:,.0f} s of CPU: the machine was shared)"
                 if llm["seconds"] > 1.5 * llm["cpu_seconds"] else f"{llm['seconds']:,.0f} s", "`llm_rejection.json`"])
    rows.append([f"`python -m eelib.lm.head_training train` (the shipped heads: {heads['steps']} steps, 1 thread)",
                 f"{heads['seconds']:,.0f} s", "`exit_heads/training.json`"])
    return table(["what", "time", "recorded in"], rows)


def resnet_exits_text() -> str:
    """The benchmark's paragraph: every figure in it from ``resnet_exits.json``."""
    r = _load(RESULTS / "resnet_exits.json")
    d = r["details"]
    b1, b256 = d["batch1"], d["batch256"]
    drop = 100 * (r["accuracy_full"] - r["accuracy_policy"])
    met = lambda ok: "met" if ok else "not met"  # noqa: E731
    g = r["goals_met"]
    return (f"These are the figures of the course models shipped with eelib (`eelib/models/zoo/`, trained by "
            f"`benchmarks/train_zoo.py` with one CPU thread so that any machine's thread count gives the same weights), "
            f"so a fresh clone shows them without training. The policy loses {drop:.1f} pp and saves "
            f"{pct(r['flops_saved'])} of the FLOPs, close to the oracle's {pct(r['oracle_flops_saved'])}; "
            f"{pct(d['test_exit_fractions'][0], 0)} of the digits leave at the first exit. Dynamic inference gives "
            f"{'the same exit and prediction as the simulated policy on every test digit' if d['dynamic_equals_simulated'] else 'NOT the same decisions as the simulation'}. "
            f"At inference the exit heads fold their pooling into the linear layer (one product over the feature map; "
            f"`eelib.vision.exits.ExitHead.folded_weight`), and routing syncs the host once per exit. Goals of issue 12: "
            f"batch 256 — speedup {times(r['speedup_batch256'])} against a latency ideal of "
            f"{times(r['latency_ideal_speedup_batch256'])} (goal 0.85x of it: "
            f"{met(g['speedup_batch256 >= 0.85 * latency ideal'])}), never-exit overhead "
            f"{100 * r['never_exit_overhead_batch256']:+.0f}% (goal at most 3%: {met(g['never-exit overhead batch 256 <= 3%'])}); "
            f"batch 1 — speedup {times(r['speedup_batch1'])} against an ideal of {times(b1['ideal'])} on those digits "
            f"({r['speedup_batch1'] / b1['ideal']:.2f}x of it; goal 0.85x: {met(g['speedup_batch1 >= 0.85 * ideal'])}) and "
            f"never-exit overhead {100 * r['never_exit_overhead_batch1']:+.0f}% (goal at most 10%: "
            f"{met(g['never-exit overhead batch 1 <= 10%'])}). At batch 1 each head and decision is a few tensor "
            f"operations of tens of microseconds that FLOPs hardly count, and timings on this 2-core machine vary "
            f"from run to run.\n")


def rejection_text() -> str:
    """The rejection benchmark's comparison paragraph, from ``rejection.json``, beside chapter 5's one split
    (``course_models.json``, the notebook's own calls)."""
    r = _load(RESULTS / "rejection.json")
    one = _load(RESULTS / "course_models.json")["chapter5"]["policies"]
    d, full = r["details"], r["full_flops"]
    gap = 100 * (r["reject_only_accuracy"] - r["combined_accuracy"])
    higher = lambda a, b: "higher" if a > b else "lower"  # noqa: E731
    combined, reject_only = one["combined"], one["reject_only"]
    return (f"The combined policy is within {gap:.2f} pp of the reject-only policy's accuracy at "
            f"{pct(r['combined_avg_flops'] / r['reject_only_avg_flops'], 0)} of its FLOPs, with a "
            f"{higher(r['combined_coverage'], r['reject_only_coverage'])} coverage on average "
            f"({pct(r['combined_coverage'])} against {pct(r['reject_only_coverage'])}: means over the "
            f"{r['n_splits']} splits). On chapter 5's one split (calibrated on the validation digits, measured on the "
            f"test digits; `notebooks/05_rejection` prints it) its coverage is "
            f"{higher(combined['coverage'], reject_only['coverage'])} ({pct(combined['coverage'])} against "
            f"{pct(reject_only['coverage'])}, accuracy {pct(combined['accuracy'], 2)} against "
            f"{pct(reject_only['accuracy'], 2)}): which of the two covers more changes from split to split. "
            f"It is within its budget on the calibration split by construction, "
            f"and on the test split it went over the budget in {pct(d['combined_over_budget_on_test_fraction'])} of the "
            f"splits (at most {d['combined_test_avg_flops_max'] / 1e6:.1f} MFLOPs, "
            f"{pct(d['combined_test_avg_flops_max'] / full, 0)} of the full network).\n")


TABLES: dict[str, Callable[[], str]] = {
    "course_ee_agreement": course_ee_agreement, "chapter1": chapter1, "chapter2": chapter2, "chapter4": chapter4,
    "resnet_exits": resnet_exits, "resnet_exits_overhead": resnet_exits_overhead,
    "rejection_guarantee": rejection_guarantee, "rejection_policies": rejection_policies, "chapter6": chapter6,
    "gpt2_exits": gpt2_exits, "self_speculative": self_speculative, "self_speculative_loops": self_speculative_loops,
    "self_speculative_projection": self_speculative_projection, "self_speculative_text": self_speculative_text,
    "llm_rejection": llm_rejection, "llm_rejection_text": llm_rejection_text,
    "run_times": run_times,
    "benchmark_times": benchmark_times, "resnet_exits_text": resnet_exits_text, "rejection_text": rejection_text,
}


def render(text: str) -> str:
    """``text`` (the README) with every marked table rendered afresh; an unknown name is an error."""
    def one(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"README marker 'table: {name}' names no table; known: {', '.join(TABLES)}")
        return f"<!-- {match['kind']}: {name} -->\n{TABLES[name]()}<!-- /{match['kind']} -->"
    return MARKER.sub(one, text)


def stale(text: str) -> list[str]:
    """The names of the marked tables whose text differs from their rendering."""
    fresh = {m["name"]: m["body"] for m in MARKER.finditer(render(text))}
    return [m["name"] for m in MARKER.finditer(text) if m["body"] != fresh[m["name"]]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale tables (exit status 1 if any)")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    names = stale(text)
    if args.check:
        print("stale tables: " + ", ".join(names) if names else "every table is up to date")
        return 1 if names else 0
    if names:
        tmp = args.readme.with_name(args.readme.name + ".tmp")
        tmp.write_text(render(text), encoding="utf-8")
        tmp.replace(args.readme)
    print("rewritten: " + ", ".join(names) if names else "every table was up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
