"""``python -m eelib.course ...``: the course's command line (`eelib.course.cli`)."""

import sys

from eelib.course.cli import main

sys.exit(main())
