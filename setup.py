"""Build of carmp's C extension; all metadata lives in pyproject.toml.

Knobs (environment variables):
  CARMP_DEBUG=1     -O0 -g3, assertions on
  CARMP_SANITIZE=1  AddressSanitizer + UBSan (run Python with LD_PRELOAD of libasan)
  CARMP_COVERAGE=1  gcov instrumentation
"""

import glob
import os

from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


compile_args = ["-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
link_args: list[str] = []
if _flag("CARMP_DEBUG"):
    compile_args += ["-O0", "-g3", "-UNDEBUG"]
else:
    compile_args += ["-O2"]
if _flag("CARMP_SANITIZE"):
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    link_args += ["-fsanitize=address,undefined"]
if _flag("CARMP_COVERAGE"):
    compile_args += ["--coverage"]
    link_args += ["--coverage"]

setup(
    ext_modules=[
        Extension(
            "carmp._native",
            # the core (*.c) plus the binding (module.c, bind_*.c); native/tests/ is C-only
            sources=sorted(glob.glob("native/*.c")),
            depends=["native/carmp_native.h", "native/binding.h"],
            extra_compile_args=compile_args,
            extra_link_args=link_args + ["-pthread"],
        )
    ]
)
