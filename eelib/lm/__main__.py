"""``python -m eelib.lm train|eval``: retrain the course language model, or measure one (`eelib.lm.train`)."""

import sys

from eelib.lm.train import main

sys.exit(main())
