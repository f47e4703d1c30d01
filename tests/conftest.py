"""Test-wide settings: property tests draw the same examples on every run, so CI cannot flake on a rare draw.

Set ``HYPOTHESIS_PROFILE=explore`` to draw fresh random examples (and more of them) when hunting for bugs.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=1000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
