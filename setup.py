"""Build deepzip's two optional C extensions; everything else is in pyproject.toml.

- ``deepzip.runtime._spmv``: the sparse runtime's kernel (src/deepzip/runtime/_spmv.c; see runtime/_spkernel.py).
  Without it the runtime uses torch's sparse CSR kernel (``deepzip.runtime.runtime_table`` reports which one runs).
- ``deepzip.codec._huffc``: the codec's compiled entropy stage (src/deepzip/codec/_huffc.c; see codec/_fast.py).
  Without it the codec runs its numpy code, which writes and reads the same bytes, only slower.

Both are optional: without a C compiler the install still succeeds.
"""

import sys

from setuptools import Extension, setup

# Portable flags only (no -march=native: the wheel must run on any CPU of its platform).
flags = [] if sys.platform == "win32" else ["-O3", "-fno-wrapv", "-std=c99", "-fvisibility=hidden"]
setup(ext_modules=[
    Extension("deepzip.runtime._spmv", ["src/deepzip/runtime/_spmv.c"], extra_compile_args=flags, optional=True),
    Extension("deepzip.codec._huffc", ["src/deepzip/codec/_huffc.c"], extra_compile_args=flags, optional=True),
])
