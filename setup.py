"""Build the Cython engine; all metadata lives in pyproject.toml."""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

directives = {"language_level": 3, "embedsignature": True}
if os.environ.get("NNC_CYTHON_COVERAGE"):
    directives["linetrace"] = True

macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if os.environ.get("NNC_CYTHON_COVERAGE"):
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]



def extension(name: str) -> Extension:
    return Extension(
        f"nnc.{name}",
        [f"nnc/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=macros,
        extra_compile_args=["-O3"],
    )


extensions = [extension("_engine")]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
