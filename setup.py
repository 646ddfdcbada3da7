# SPDX-License-Identifier: MIT
"""Build glue: cffi compiles csrc/ into zerocopy._native; the wheel is abi3."""
import sys

from setuptools import setup

if not sys.platform.startswith("linux"):
    sys.exit("zerocopy-net builds on Linux only: it wraps sendfile, splice and MSG_ZEROCOPY.")

setup(
    cffi_modules=["zerocopy/_build.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
