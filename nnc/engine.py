"""Choice of the entropy-coding engine.

Two engines implement one interface (docs/dev/engine-api.md): the compiled
Cython engine ``nnc._engine`` (default) and the pure-Python reference engine
``nnc._pyengine``, written to be read next to the spec.  ``NNC_ENGINE=python``
in the environment, or ``get_engine("python")``, selects the reference one.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

ENGINES = {"cython": "nnc._engine", "python": "nnc._pyengine"}


def get_engine(name: str | None = None) -> ModuleType:
    """Return the engine module called ``name`` (default: ``$NNC_ENGINE`` or "cython").

    >>> get_engine("python").__name__
    'nnc._pyengine'
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
