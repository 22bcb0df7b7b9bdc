"""``python -m tools.fuzz --target all --seconds N [--seed S] [--verbose]``."""

import sys

from .runner import main

sys.exit(main())
