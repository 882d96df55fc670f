"""The README's result tables are the results files' figures: none is copied by hand."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The sections whose tables report measured figures: every table in them must be rendered.
RESULT_SECTIONS = ("## The course language model", "## Measured results")


def _tables_module():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _tables_module()


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^(## .*)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_every_readme_table_equals_its_results_file():
    stale = tables.stale(README.read_text(encoding="utf-8"))
    assert not stale, f"README tables differ from the results files: {stale}; run python benchmarks/readme_tables.py"


def test_every_result_table_is_rendered_from_a_results_file():
    sections = _sections(README.read_text(encoding="utf-8"))
    for title in RESULT_SECTIONS:
        assert title in sections, f"the README has no section {title!r}"
        unmarked = tables.MARKER.sub("", sections[title])
        loose = [line for line in unmarked.splitlines() if line.startswith("|")]
        assert not loose, f"{title}: table lines outside a '<!-- table: NAME -->' block: {loose[:2]}"
    names = [m["name"] for m in tables.MARKER.finditer(README.read_text(encoding="utf-8"))]
    assert sorted(names) == sorted(set(names)), "a table is rendered twice"
    assert set(names) == set(tables.TABLES), f"tables defined but not in the README: {set(tables.TABLES) - set(names)}"


def test_a_changed_result_shows_as_a_stale_table(tmp_path, monkeypatch):
    """The check can fail: one changed figure in a copy of the results makes its table stale."""
    results = tmp_path / "results"
    results.mkdir()
    for path in tables.RESULTS.glob("*.json"):
        (results / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    data = json.loads((results / "resnet_exits.json").read_text(encoding="utf-8"))
    data["speedup_batch1"] += 1.0
    (results / "resnet_exits.json").write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setattr(tables, "RESULTS", results)
    assert tables.stale(README.read_text(encoding="utf-8")) == ["resnet_exits", "resnet_exits_text"]


def test_rewrite_puts_the_results_in(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table: resnet_exits -->\n| old |\n<!-- /table -->\nafter\n", encoding="utf-8")
    assert tables.main(["--readme", str(readme), "--check"]) == 1
    assert tables.main(["--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    speedup = json.loads((tables.RESULTS / "resnet_exits.json").read_text(encoding="utf-8"))["speedup_batch1"]
    assert f"| {speedup:.2f}x |" in text and "| old |" not in text
    assert text.startswith("intro\n") and text.endswith("after\n")
    assert tables.main(["--readme", str(readme), "--check"]) == 0
    assert not list(tmp_path.glob("*.tmp"))


def test_an_unknown_table_name_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table: nosuch -->\n| x |\n<!-- /table -->\n", encoding="utf-8")
    with pytest.raises(ValueError, match="nosuch"):
        tables.main(["--readme", str(readme)])


def test_chapter5_one_split_is_what_the_notebook_computes():
    """The README's sentence on chapter 5's one split: its figures, computed again with the notebook's calls."""
    import torch

    import eelib

    spec = importlib.util.spec_from_file_location("course_models", ROOT / "benchmarks" / "course_models.py")
    course_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(course_models)
    stored = json.loads((tables.RESULTS / "course_models.json").read_text(encoding="utf-8"))["chapter5"]
    fresh = course_models.chapter5(eelib.load_data("mnist5k"), torch.device("cpu"))
    for mode, row in stored["policies"].items():
        assert fresh["policies"][mode] == pytest.approx(row, abs=1e-6), mode


def test_chapter7_summary_says_what_the_benchmarks_measured():
    """Chapter 7's summary calls early exit at 95% agreement a slowdown, as measured by the README's benchmarks."""
    cells = json.loads((ROOT / "notebooks" / "07_token_difficulty.ipynb").read_text(encoding="utf-8"))["cells"]
    summary = " ".join("".join(c["source"]) for c in cells if "".join(c["source"]).startswith("**Summary.**"))
    assert "a ratio below 1x there is a slowdown, which is what the README's benchmark measured" in " ".join(summary.split())
    gpt2 = json.loads((tables.RESULTS / "gpt2_exits.json").read_text(encoding="utf-8"))
    spec = json.loads((tables.RESULTS / "self_speculative.json").read_text(encoding="utf-8"))
    early = next(row for row in spec["models"]["course"]["loops"] if row["loop"] == "early exit (max_prob, lazy)")
    assert gpt2["speedup"] < 1 and early["speedup"] < 1, \
        "a benchmark now measures early exit at 95% agreement faster than the plain loop: rewrite chapter 7's summary"


def test_the_run_time_table_shows_the_busy_machines_times_beside_the_idle_ones(tmp_path, monkeypatch):
    """``run_times.py --busy 1`` writes run_times_busy.json: its lecture times get their own column."""
    rows = [{"what": "`notebooks/03_cost_per_head.ipynb`", "seconds": 11.2},
            {"what": "`solutions/03_cost_per_head.ipynb`", "seconds": 3.0}]
    (tmp_path / "run_times.json").write_text(json.dumps({"rows": rows}))
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    assert "busy" not in tables.run_times()
    busy = {"rows": [{"what": "`notebooks/03_cost_per_head.ipynb`", "seconds": 18.4}], "busy_processes": 1}
    (tmp_path / "run_times_busy.json").write_text(json.dumps(busy))
    text = tables.run_times()
    assert "| chapter | lecture (`notebooks/`) | lecture, 1 other busy process(es) | solution |" in text
    assert "| `03_cost_per_head` | 11 s | 18 s | 3 s | — |" in text
