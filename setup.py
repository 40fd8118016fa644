"""The native part of the build: secptune.mpc._native, the DCF key generation and
evaluation on the CPU's AES instructions.  Everything else is in pyproject.toml.

The extension is optional: where it cannot be compiled (no C compiler), the install goes on
and secptune.mpc.fss uses its numpy implementation, which gives the same keys and shares.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("secptune.mpc._native", sources=["src/secptune/mpc/_native.c"],
                             extra_compile_args=["-O3"], optional=True)])
