"""Choice of the entropy-coding engine.

Two engines implement one interface (docs/dev/engine-api.md): the compiled
Cython engine ``nnc._engine`` (default) and the pure-Python reference engine
``nnc._pyengine``, written to be read next to the spec.  ``NNC_ENGINE=python``
in the environment, or ``get_engine("python")``, selects the reference one.
Both give identical bytes and identical decoded arrays for every input.

Examples
--------
>>> import nnc
>>> stream = nnc.encode({"w": [[0.5, -0.25], [1.0, 0.0]]}, qp=-8, engine="python")
>>> stream == nnc.encode({"w": [[0.5, -0.25], [1.0, 0.0]]}, qp=-8, engine="cython")
True
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

#: Engine name -> module name.
ENGINES = {"cython": "nnc._engine", "python": "nnc._pyengine"}


def get_engine(name: str | None = None) -> ModuleType:
    """Return the engine module called ``name`` (default: ``$NNC_ENGINE`` or "cython").

    The engine implements the arithmetic coder, context modelling,
    binarisation and scans (spec 9–11); its interface is described in
    docs/dev/engine-api.md.  Names are case-insensitive.

    Parameters
    ----------
    name : str or None
        ``"cython"`` (the compiled engine) or ``"python"`` (the reference
        engine).  None or ``""`` takes the environment variable
        ``NNC_ENGINE``, and ``"cython"`` if that is unset or empty.

    Returns
    -------
    ``types.ModuleType``
        ``nnc._engine`` or ``nnc._pyengine``.

    Raises
    ------
    ValueError
        If the name is not a key of ``ENGINES``.
    ImportError
        If the compiled engine is asked for but was not built.

    Examples
    --------
    >>> from nnc.engine import get_engine
    >>> get_engine("python").__name__
    'nnc._pyengine'
    >>> get_engine("Cython").__name__
    'nnc._engine'
    >>> get_engine("fortran")
    Traceback (most recent call last):
        ...
    ValueError: unknown engine 'fortran'; choose one of ['cython', 'python']
    """
    name = (name or os.environ.get("NNC_ENGINE") or "cython").lower()
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}")
    try:
        return importlib.import_module(ENGINES[name])
    except ImportError as exc:
        if name == "cython":
            raise ImportError(
                "the compiled engine nnc._engine is not built; install the package with "
                "`pip install .` (needs a C compiler) or set NNC_ENGINE=python"
            ) from exc
        raise


__all__ = ["get_engine", "ENGINES"]
