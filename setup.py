"""Build the Cython engine when a C compiler is available; all metadata lives in pyproject.toml.

The compiled engine (nnc._engine) is optional: when it cannot be compiled, the build
says so and installs nnc without it, and nnc runs on its pure-Python engine
(nnc._pyengine, slower, one warning at import).  NNC_REQUIRE_ENGINE=1 makes a failed
compilation an error instead (wheel builds set it, so that no wheel ships without the
engine).  Cython and numpy are build requirements either way (pyproject.toml).
"""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

directives = {"language_level": 3, "embedsignature": True}
if os.environ.get("NNC_CYTHON_COVERAGE"):
    directives["linetrace"] = True

macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if os.environ.get("NNC_CYTHON_COVERAGE"):
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]

BANNER = "=" * 78

WITHOUT = {
    "nnc._engine": "nnc is installed without it and runs on the pure-Python engine (slower).",
    "nnc._mapguard": "nnc is installed without it: a stream file cut by another program while nnc\n"
    "decodes it can then end the process (SIGBUS) instead of raising an error.",
}


def extension(name: str) -> Extension:
    return Extension(
        f"nnc.{name}",
        [f"nnc/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        depends=["nnc/_pricer.h", "nnc/_mapguard.h"],
        define_macros=macros,
    )


class OptionalBuildExt(build_ext):
    """build_ext that installs nnc without the compiled engine when compilation fails."""

    def build_extension(self, ext):
        if self.compiler.compiler_type != "msvc":  # MSVC optimises with its own default (/O2)
            ext.extra_compile_args = list(ext.extra_compile_args or []) + ["-O3"]
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, a missing compiler (OSError, ...)
            if os.environ.get("NNC_REQUIRE_ENGINE", "") not in ("", "0"):
                raise
            self._report_without(ext, exc)

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError and kin)
            if os.environ.get("NNC_REQUIRE_ENGINE", "") not in ("", "0"):
                raise
            for ext in self.extensions:
                self._report_without(ext, exc)

    @staticmethod
    def _report_without(ext, exc):
        msg = (
            f"\n{BANNER}\nnnc: the compiled {'engine' if ext.name == 'nnc._engine' else 'module'} {ext.name} could NOT be "
            "built "
            f"({type(exc).__name__}: {str(exc).strip()[:300]}).\n"
            f"{WITHOUT.get(ext.name, WITHOUT['nnc._engine'])}\n"
            "Install a C compiler and reinstall to get it; set\n"
            "NNC_REQUIRE_ENGINE=1 to make this an error.\n"
            f"{BANNER}\n"
        )
        sys.stderr.write(msg)
        print(msg)  # pip shows stdout of a failed step only with -v; keep both


extensions = [extension("_engine"), extension("_mapguard")]

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives),
    cmdclass={"build_ext": OptionalBuildExt},
)
