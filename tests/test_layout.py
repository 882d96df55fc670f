"""The package's layout holds: two halves around one decision layer, the course apart, nothing heavy at import."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import eelib

PACKAGE = Path(eelib.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports (relative imports are not used in eelib)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; eelib imports absolutely"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules(folder: str) -> list[Path]:
    root = PACKAGE / folder if folder else PACKAGE
    return sorted(root.glob("*.py") if folder == "" else root.rglob("*.py"))


@pytest.mark.parametrize("room, forbidden", [
    ("vision", ("eelib.course", "eelib.lm")),  # the image half knows nothing of the language half
    ("lm", ("eelib.course", "eelib.vision")),  # nor the language half of the image half
    ("_util", ("eelib.course", "eelib.vision", "eelib.lm", "eelib.policies", "eelib.rejection")),
    ("", ("eelib.course", "eelib.vision", "eelib.lm")),  # the decision layer serves both halves
])
def test_library_rooms_import_only_what_they_may(room, forbidden):
    files = modules(room)
    assert files, f"no modules in {room or 'eelib/'}"
    for path in files:
        bad = sorted(name for name in imported_modules(path)
                     if any(name == f or name.startswith(f + ".") for f in forbidden))
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"


def test_import_is_light_and_every_public_name_loads():
    code = ("import sys, eelib\n"
            "assert 'torch' not in sys.modules, 'import eelib imported torch'\n"
            "for name in eelib.__all__: getattr(eelib, name)\n"
            "heavy = [m for m in ('torchvision', 'transformers', 'matplotlib', 'eelib.course') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "print(len(eelib.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(eelib.__all__) > 100
    assert set(eelib.__all__) <= set(dir(eelib))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        eelib.not_a_name


def test_errors_form_one_hierarchy_and_keep_their_builtin_bases():
    assert issubclass(eelib.DownloadError, eelib.EelibError) and issubclass(eelib.DownloadError, RuntimeError)
    assert issubclass(eelib.ModelUnavailableError, eelib.EelibError) and issubclass(eelib.ModelUnavailableError, OSError)
    assert issubclass(eelib.EnergyUnavailable, eelib.EelibError) and issubclass(eelib.EnergyUnavailable, RuntimeError)
    from eelib._util import cache
    from eelib.lm import model
    from eelib.vision import cost

    # each room raises the one class, not a copy of it
    assert cache.DownloadError is model.DownloadError is eelib.DownloadError
    assert model.ModelUnavailableError is eelib.ModelUnavailableError and cost.EnergyUnavailable is eelib.EnergyUnavailable


def test_result_dataclasses_share_one_field_order():
    import dataclasses

    for cls in (eelib.PolicyResult, eelib.DynamicResult, eelib.RejectResult):
        assert [f.name for f in dataclasses.fields(cls)][:2] == ["predictions", "exits"], cls.__name__
    assert [f.name for f in dataclasses.fields(eelib.Calibration)][:2] == \
        [f.name for f in dataclasses.fields(eelib.RejectCalibration)][:2] == ["policy", "val"]


def test_a_cost_description_or_its_two_numbers():
    from eelib.policies import exit_and_full_flops

    model = eelib.resnet(8, width=4)
    ee = eelib.EarlyExitNet(model, ["layer1", "layer2"])
    costs = eelib.exit_costs(ee, (1, 8, 8))
    assert exit_and_full_flops(costs) == (costs.flops, costs.full_flops)
    cost_model = eelib.CostModel(costs.flops, costs.full_flops)
    assert exit_and_full_flops(cost_model) == (cost_model.exit_flops, cost_model.full_flops)
    assert exit_and_full_flops([1, 2, 3], 3) == ([1, 2, 3], 3)
    with pytest.raises(TypeError, match="costs must be a cost description"):
        exit_and_full_flops([1, 2, 3])


def test_the_flat_layout_s_module_paths_still_work_and_say_where_they_went():
    from eelib.course import plots
    from eelib.lm import model, train

    with pytest.warns(DeprecationWarning, match="eelib.plots is now eelib.course.plots"):
        from eelib import plots as old_plots
    assert old_plots is plots
    with pytest.warns(DeprecationWarning, match="eelib.lm.encode is now eelib.lm.model.encode"):
        assert eelib.lm.encode is model.encode
    with pytest.warns(DeprecationWarning, match="eelib.lm.load_corpus is now eelib.lm.train.load_corpus"):
        assert eelib.lm.load_corpus is train.load_corpus
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        eelib.lm.nothing_here


def test_old_import_paths_and_names_still_work():
    import importlib

    with pytest.warns(DeprecationWarning, match="eelib.lm_exits is now eelib.lm.exits"):
        old = importlib.import_module("eelib.lm_exits")
    from eelib.lm import exits

    assert old is exits
    with pytest.warns(DeprecationWarning, match="eelib.course.prepare_models is now eelib.course.cli.prepare_models"):
        from eelib.course import prepare_models  # noqa: F401
    from eelib._util import device

    assert device.timed is eelib.timed and device.eval_mode is eelib.eval_mode
    with pytest.warns(DeprecationWarning, match="one_exit"):
        assert eelib.policies.MEASURES["entropy"].per_exit is True
    with pytest.warns(DeprecationWarning, match="features_at"):
        feats = eelib.resnet(8, width=4).forward_intermediates(__import__("torch").zeros(1, 1, 8, 8), ["stem"])
    assert list(feats) == ["stem"]


def test_the_old_argument_order_is_refused_with_a_message():
    import torch

    model = eelib.EarlyExitNet(eelib.resnet(8, width=4), ["layer1"]).eval()
    x, policy = torch.zeros(2, 1, 8, 8), eelib.ExitPolicy("max_prob", (0.9,))
    for call in (lambda: eelib.dynamic_inference(model, x, policy),
                 lambda: eelib.measure_speedup(model, x, policy, batch_size=1)):
        with pytest.raises(TypeError, match="the policy comes first"):
            call()


def test_an_old_module_path_is_an_alias_that_reload_re_executes():
    """Issue 26: after ``import eelib.quiz`` the real module took the alias's name and spec, so
    ``importlib.reload`` (``%autoreload``) of it re-executed nothing."""
    code = ("import importlib, warnings\n"
            "warnings.simplefilter('ignore')\n"
            "import eelib.quiz\n"
            "import eelib.course.quiz as real\n"
            "import sys\n"
            "assert sys.modules['eelib.quiz'] is real\n"
            "assert real.__name__ == real.__spec__.name == 'eelib.course.quiz', (real.__name__, real.__spec__.name)\n"
            "for name in ('eelib.course.quiz', 'eelib.quiz'):\n"
            "    real.QUIZZES = None\n"
            "    assert importlib.reload(sys.modules[name]) is real\n"
            "    assert real.QUIZZES is not None, name + ': reload did not re-execute the module'\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


KNOWN_CYCLES: list[set[str]] = []  # none: a new cycle fails the test


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the eelib modules it imports}, read with ast from every file of the package.

    Every import statement counts, at the top of the module or inside a function (an import moved
    into a function still makes the two modules depend on each other), except those under
    ``if TYPE_CHECKING:``, which never run. ``from eelib.course import slides`` names the module
    ``eelib.course.slides``; ``from eelib.rejection import accept`` the module ``eelib.rejection``.
    """
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def type_checking(node) -> bool:
        test = node.test
        return isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"

    graph = {}
    for name, path in files.items():
        imported, todo = set(), [ast.parse(path.read_text(encoding="utf-8"))]
        while todo:
            for node in ast.iter_child_nodes(todo.pop()):
                if isinstance(node, ast.If) and type_checking(node):
                    continue
                if isinstance(node, ast.Import):
                    imported.update(a.name for a in node.names if a.name in files)
                elif isinstance(node, ast.ImportFrom) and node.module:
                    for alias in node.names:
                        full = f"{node.module}.{alias.name}"
                        imported.add(full if full in files else node.module)
                todo.append(node)
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds an import cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [{"a", "b", "c"}]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    assert "eelib.course.grading" in graph["eelib.course.cli"]  # the graph sees the package's imports
    cycles = [c for c in import_cycles(graph) if c not in KNOWN_CYCLES]
    assert not cycles, f"import cycles: {[sorted(c) for c in cycles]}"
