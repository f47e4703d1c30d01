"""Build the optional C kernel of deepzip's sparse runtime (src/deepzip/runtime/_spmv.c; see deepzip/runtime/_spkernel.py).

Everything else is in pyproject.toml. The extension is optional: without a C compiler the install still succeeds and
the runtime uses torch's sparse CSR kernel instead (``deepzip.runtime.runtime_table`` reports which one runs).
"""

import sys

from setuptools import Extension, setup

# Portable flags only (no -march=native: the wheel must run on any CPU of its platform).
flags = [] if sys.platform == "win32" else ["-O3", "-fno-wrapv", "-std=c99", "-fvisibility=hidden"]
setup(ext_modules=[Extension("deepzip.runtime._spmv", ["src/deepzip/runtime/_spmv.c"], extra_compile_args=flags, optional=True)])
