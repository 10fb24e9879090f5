"""The declared interface of an nnc engine: the names and signatures both engines expose.

The compiled engine ``nnc._engine`` and the pure-Python engine
``nnc.engine.python`` implement exactly this; docs/dev/engine-api.md describes
what each name does.  :func:`check_engine` lists where a module departs from it
(the engine-interface test runs it on both engines).

Examples
--------
>>> from nnc.engine import get_engine
>>> check_engine(get_engine("python"))
[]
"""

from __future__ import annotations

import inspect
from types import ModuleType

import numpy as np

#: Each module-level function of the interface and its parameter list (annotations left out).
FUNCTIONS = {
    "compute_entry_points": "(payload, edition, tensors)",
    "bin_cost": "(state_c, bin)",
    "estimate_tensor_bits": "(levels, height, width, *, n_gtx, dq=False, scan_order=0, edition=2, "
    "codebook_size=0, codebook_zero=0, init_sets=None)",
    "context_count": "(edition, n_gtx)",
    "scan_permutation": "(height, width, scan_order)",
    "block_row_count": "(height, scan_order)",
    "rdoq_levels": "(x, height, width, *, lam, n_gtx=11, scan_order=0, edition=2, importance=None)",
    "dq_rdoq_levels": "(x, height, width, *, lam, n_gtx=11, scan_order=0, edition=2, importance=None, chunk=1024, step=1.0)",
    "dq_trellis": "(x)",
    "request_stop": "(change)",
}

#: Each class of the interface: its constructor's keyword arguments, its methods' parameter lists, its data attributes.
CLASSES = {
    "PayloadDecoder": (
        ("data", "edition"),
        {
            "read_bypass": "(self, nbits)",
            "read_qp_offset": "(self, nbits)",
            "decode_tensor": "(self, height, width, *, n_gtx, dq=False, scan_order=0, codebook_size=0, "
            "codebook_zero=0, parent_present=False, tca_base=None, hdsp_history=None, "
            "entry_points=None, start_block_row=0, record_entry_points=False, "
            "stop_block_row=None, out=None)",
            "fork": "(self)",
            "finish": "(self)",
        },
        (
            "bytes_consumed",
            "bit_position",
            "last_entry_points",
            "last_init_sets",
            "last_row_skip",
            "last_hdsp",
            "last_boundary",
            "edition",
        ),
    ),
    "PayloadEncoder": (
        ("edition",),
        {
            "write_bypass": "(self, value, nbits)",
            "write_qp_offset": "(self, value, nbits)",
            "encode_tensor": "(self, levels, height, width, *, n_gtx, dq=False, scan_order=0, param_opt=True, "
            "init_sets=None, codebook_size=0, codebook_zero=0, parent_present=False, "
            "tca_base=None, hdsp_history=None, hdsp=False, row_skip=False, threads=1)",
            "choose_init_sets": "(self, levels, height, width, *, n_gtx, dq=False, scan_order=0, codebook_size=0, "
            "codebook_zero=0, parent_present=False, tca_base=None, hdsp_history=None, hdsp=False, "
            "row_skip=False, threads=1)",
            "finish": "(self)",
        },
        ("edition",),
    ),
}

#: Every public name of an engine module.
NAMES = sorted([*FUNCTIONS, *CLASSES])


def parameters(func) -> str:
    """A callable's parameter list as declared above: names, kinds and defaults, no annotations.

    Examples
    --------
    >>> def f(a, b: int = 2, *, c=None) -> int: ...
    >>> parameters(f)
    '(a, b=2, *, c=None)'
    """
    sig = inspect.signature(func)
    plain = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=plain, return_annotation=inspect.Signature.empty))


def _public_members(cls) -> set:
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}


def check_engine(module: ModuleType) -> list[str]:
    """Where ``module`` departs from the declared interface: one line per problem, [] when none."""
    problems = []
    exported = getattr(module, "__all__", None)
    if exported is None or sorted(exported) != NAMES:
        problems.append(f"{module.__name__}.__all__ is {exported!r}, not the interface's {NAMES}")
    for name, declared in FUNCTIONS.items():
        func = getattr(module, name, None)
        if func is None:
            problems.append(f"{module.__name__} has no {name}")
        elif parameters(func) != declared:
            problems.append(f"{module.__name__}.{name}{parameters(func)} is not {name}{declared}")
    for name, (_ctor, methods, _attributes) in CLASSES.items():
        cls = getattr(module, name, None)
        if cls is None:
            problems.append(f"{module.__name__} has no {name}")
            continue
        extra = _public_members(cls) - set(methods)
        if extra:
            problems.append(f"{module.__name__}.{name} has methods outside the interface: {sorted(extra)}")
        for method, declared in methods.items():
            func = getattr(cls, method, None)
            if func is None:
                problems.append(f"{module.__name__}.{name} has no method {method}")
            elif parameters(func) != declared:
                problems.append(f"{module.__name__}.{name}.{method}{parameters(func)} is not {method}{declared}")
    if not problems:
        problems += _check_instances(module)
    return problems


def _check_instances(module: ModuleType) -> list[str]:
    """Constructor keywords and data attributes, on a one-element payload."""
    problems = []
    enc = module.PayloadEncoder(edition=2)
    enc.encode_tensor(np.zeros(1, np.int32), 1, 1, n_gtx=1)
    dec = module.PayloadDecoder(data=enc.finish(), edition=2)
    dec.decode_tensor(1, 1, n_gtx=1)
    for obj, name in ((dec, "PayloadDecoder"), (enc, "PayloadEncoder")):
        for attribute in CLASSES[name][2]:
            if not hasattr(obj, attribute):
                problems.append(f"{module.__name__}.{name} objects have no attribute {attribute}")
    return problems


__all__ = ["FUNCTIONS", "CLASSES", "NAMES", "parameters", "check_engine"]
