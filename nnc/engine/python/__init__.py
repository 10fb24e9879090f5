"""The pure-Python engine of nnc ("educational decoder").

The entropy-coding layer of an NNR compressed data unit (NDU) payload --
DeepCABAC -- in plain Python, written to be read side by side with the spec, one
module per concept:

* :mod:`.payload`       clause 8: the per-tensor payload order, the decoder and encoder of a payload;
* :mod:`.arithmetic`    clause 9: the binary arithmetic coder and its probability model;
* :mod:`.binarisation`  clause 10: binarisation of a level, dependent quantisation, contexts;
* :mod:`.scan`          clause 11: the matrix view, the block scan, block rows, entry points;
* :mod:`.trellis`       Annex A: RDOQ and the dependent-quantisation trellis (informative).

It has exactly the interface of the compiled engine ``nnc._engine``, declared in
:mod:`nnc.engine.interface` (docs/dev/engine-api.md); both give identical bytes,
arrays and quantiser decisions.  This one favours clarity over speed: it is the
engine to step through in a debugger when a stream does not decode.

``edition`` 1 selects the rules of the 1st edition of ISO/IEC 15938-17 (profile 0
streams), ``edition`` 2 those of the 2nd edition (profile 1).
"""

from __future__ import annotations

from .arithmetic import ArithmeticDecoder, ArithmeticEncoder, ContextModel, bin_cost, rlps
from .binarisation import CodebookBound, ContextLayout, binarise, context_count, dq_coded_value, dq_reconstruct
from .payload import PayloadDecoder, PayloadEncoder, estimate_tensor_bits
from .scan import TensorScan, block_row_count, compute_entry_points, request_stop, scan_permutation
from .trellis import dq_rdoq_levels, dq_trellis, rdoq_levels

#: The engine interface (nnc.engine.interface.INTERFACE); the other names above are this engine's own.
__all__ = [
    "PayloadDecoder",
    "PayloadEncoder",
    "compute_entry_points",
    "bin_cost",
    "estimate_tensor_bits",
    "context_count",
    "rdoq_levels",
    "dq_rdoq_levels",
    "dq_trellis",
    "scan_permutation",
    "block_row_count",
    "request_stop",
]
