"""Train the shipped course models and write them into the package (``eelib/models/zoo/``).

Trains every recipe of :data:`eelib.vision.zoo.RECIPES` from its seed with the zoo's own training
(:func:`eelib.vision.zoo.train_recipe`, under :func:`eelib._util.device.reproducible_training`: one CPU
thread, so the weights do not depend on the machine's thread count), saves each as one
safetensors file (float32 weights; the recipe, the training history, the test accuracy, the
device, PyTorch's version and the training time in its metadata) and writes ``MANIFEST.json``
with each file's sha256 and recipe key, which :func:`eelib.load_trained` checks on load.

Run on the CPU: ``python benchmarks/train_zoo.py`` (about 3 minutes on 2 cores; ``--only NAME``
for one model). Afterwards rerun the benchmarks (``resnet_exits.py``, ``rejection.py``) and
``python benchmarks/readme_tables.py``, so that the README shows the shipped models' figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from eelib.vision import zoo
from eelib._util.cache import atomic_path, file_digest


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=list(zoo.RECIPES), help="train only these models")
    args = parser.parse_args(argv)
    names = args.only or list(zoo.RECIPES)
    device = torch.device("cpu")
    zoo.SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    manifest = zoo.shipped_models()
    for name in names:
        recipe = zoo.RECIPES[name]
        start = time.perf_counter()
        model, history, test_accuracy = zoo.train_recipe(recipe, device=device, progress=False, desc=name)
        seconds = time.perf_counter() - start
        meta = {"recipe": json.loads(json.dumps(recipe.to_dict())), "history": history.to_dict(),
                "test_accuracy": test_accuracy, "trained_on": device.type,
                "torch": torch.__version__, "machine": platform.machine(), "train_seconds": round(seconds, 1)}
        path = zoo.save_model(model, meta, zoo.SHIPPED_DIR / f"{name}.safetensors")
        manifest[name] = {"file": path.name, "sha256": file_digest(path, "sha256"), "key": recipe.key()}
        print(f"{name}: test accuracy {test_accuracy:.4f}, trained in {seconds:.0f} s, {path}", flush=True)
    with atomic_path(zoo.MANIFEST) as tmp:
        tmp.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {zoo.MANIFEST}")
    return manifest


if __name__ == "__main__":
    main()
