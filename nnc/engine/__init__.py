"""The entropy-coding engine: which one runs, and the interface both implement.

Two engines implement one interface, declared in :mod:`nnc.engine.interface`
(docs/dev/engine-api.md): the compiled Cython engine ``nnc._engine`` and the
pure-Python engine ``nnc.engine.python``, written to be read next to the spec.
Both give identical bytes, decoded arrays and quantiser decisions for every input.

The compiled engine is the default.  When it is not built (an install without a
C compiler), importing nnc warns once with :class:`EngineFallbackWarning` and the
Python engine runs instead.  ``NNC_ENGINE=python`` in the environment, or
``get_engine("python")``, selects the Python engine explicitly; asking for
``"cython"`` explicitly when it is not built raises ImportError.
:func:`engine_name` says which engine runs.

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
import sys
import warnings
from types import FrameType, ModuleType

#: Engine name -> module name.
ENGINES = {"cython": "nnc._engine", "python": "nnc.engine.python"}


class EngineFallbackWarning(RuntimeWarning):
    """The compiled engine is not built; nnc runs on the (slower) pure-Python engine.

    Issued once, when nnc is imported, unless ``NNC_ENGINE`` names an engine.

    Examples
    --------
    >>> import warnings
    >>> warnings.simplefilter("error", EngineFallbackWarning)  # make the fallback an error
    >>> warnings.resetwarnings()
    """


def _load_compiled() -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module(ENGINES["cython"]), ""
    except ImportError as exc:
        return None, str(exc)


_COMPILED, _COMPILED_MISSING = _load_compiled()

#: True when the compiled engine ``nnc._engine`` is importable.
COMPILED_AVAILABLE = _COMPILED is not None


def _outside_nnc_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside nnc and the import machinery: the user's ``import nnc``
    (stacklevel=2 pointed into ``<frozen importlib._bootstrap>``)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None:
        name = frame.f_code.co_filename
        if not ("importlib" in name and "_bootstrap" in name):  # (frames warnings.warn skips itself)
            ours = os.path.abspath(name).startswith(package + os.sep)
            if not ours and f"{os.sep}importlib{os.sep}" not in name:
                return level
            level += 1
        frame = frame.f_back
    return 2


if not COMPILED_AVAILABLE and not os.environ.get("NNC_ENGINE"):
    warnings.warn(
        f"the compiled engine nnc._engine is not built ({_COMPILED_MISSING}); nnc runs on the pure-Python "
        "engine, which gives the same results but is much slower. Install with a C compiler "
        "(`pip install .`) to build it, or set NNC_ENGINE=python to silence this warning.",
        EngineFallbackWarning,
        stacklevel=_outside_nnc_stacklevel(),
    )


def _compiled_or_none() -> ModuleType | None:
    """The compiled engine module when it is built, else None (for process-wide controls such as stopping)."""
    return _COMPILED


def engine_name(name: str | None = None) -> str:
    """The name of the engine that ``get_engine(name)`` returns: ``"cython"`` or ``"python"``.

    Parameters
    ----------
    name : str or None
        An engine name (case-insensitive), or None / ``""`` for the default:
        ``$NNC_ENGINE`` if set, else the compiled engine when it is built and the
        Python engine when it is not.

    Returns
    -------
    str
        ``"cython"`` or ``"python"``.

    Raises
    ------
    ValueError
        If the name is not a key of ``ENGINES``.

    Examples
    --------
    >>> engine_name("Python")
    'python'
    >>> engine_name() in ("cython", "python")
    True
    """
    if name is not None and not isinstance(name, str):  # api-check
        raise TypeError(f"engine must be a name ('cython' or 'python') or None, not {type(name).__name__}")
    chosen = (name or os.environ.get("NNC_ENGINE") or "").lower()
    if not chosen:
        return "cython" if COMPILED_AVAILABLE else "python"
    if chosen not in ENGINES:
        raise ValueError(f"unknown engine {chosen!r}; choose one of {sorted(ENGINES)}")
    return chosen


def get_engine(name: str | None = None) -> ModuleType:
    """Return the engine module called ``name`` (default: see :func:`engine_name`).

    The engine implements the arithmetic coder, context modelling, binarisation,
    scans and the quantisation trellis (spec 9-11, Annex A); its interface is
    declared in :mod:`nnc.engine.interface`.  Names are case-insensitive.

    Parameters
    ----------
    name : str or None
        ``"cython"`` (the compiled engine) or ``"python"`` (the pure-Python
        engine).  None or ``""`` takes the environment variable ``NNC_ENGINE``,
        and if that is unset or empty the compiled engine when it is built, else
        the Python engine.

    Returns
    -------
    ``types.ModuleType``
        ``nnc._engine`` or ``nnc.engine.python``.

    Raises
    ------
    ValueError
        If the name is not a key of ``ENGINES``.
    ImportError
        If the compiled engine is asked for by name but was not built.

    Examples
    --------
    >>> from nnc.engine import get_engine
    >>> get_engine("python").__name__
    'nnc.engine.python'
    >>> get_engine("Cython").__name__
    'nnc._engine'
    >>> get_engine("fortran")
    Traceback (most recent call last):
        ...
    ValueError: unknown engine 'fortran'; choose one of ['cython', 'python']
    """
    chosen = engine_name(name)
    if chosen == "cython":
        if _COMPILED is None:
            raise ImportError(
                f"the compiled engine nnc._engine is not built ({_COMPILED_MISSING}); install the package "
                "with `pip install .` (needs a C compiler) or use the Python engine (NNC_ENGINE=python)"
            )
        return _COMPILED
    return importlib.import_module(ENGINES[chosen])


__all__ = ["get_engine", "engine_name", "ENGINES", "COMPILED_AVAILABLE", "EngineFallbackWarning"]
