"""``python -m deepzip.cli``."""

import sys

from . import main

sys.exit(main())
