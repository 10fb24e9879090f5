#!/usr/bin/env python3
"""NNCodec 2.1.3 as an encoder command for ``nnc bench --vs-command`` (the encoder-command protocol).

    nnc bench model.safetensors --vs --plot rd.png --vs-label NNCodec \\
        --vs-command "python tools/nncodec_encoder.py {model} {qp} {out} --dq {dq}"

    python tools/nncodec_encoder.py MODEL QP OUT [--dq 1|0]

Reads MODEL with nnc (any format nnc reads), compresses its tensors with NNCodec's
``compress()`` at the global ``QP`` (qp_density 2, NNCodec's defaults otherwise; float
tensors as float32, integer tensors as integers) and writes the stream to OUT
atomically.  The protocol (documented in ``nnc bench --help`` and docs/cli.md): exit
status 0 with the stream in OUT; 77 when the coder is not available here (the oracle
is not set up), with the reason on stderr, which nnc bench reports as a skip; anything
else is a failure, its reason on stderr.

The oracle's Python is ``$NNC_ORACLE_PYTHON`` or <repo>/.oracle-venv/bin/python (set up by
tools/setup_oracle.sh).  Interoperability tooling: nnc itself never imports this.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))  # (an installed nnc, with its compiled engine, comes first)

from nnc.errors import NNCError  # noqa: E402
from nnc.formats import read_model, write_atomic  # noqa: E402
from tools.oracle.client import NNCodecOracle, OracleError, oracle_python  # noqa: E402

#: Exit status meaning "this coder is not available here": nnc bench skips it (automake's SKIP).
EXIT_UNAVAILABLE = 77


def _as_nncodec_input(tensors) -> dict:
    """NNCodec's input: float tensors as float32 (bfloat16 and float16 widened), integer tensors as int32.

    NNCodec 2.1.3 refuses int64 arrays and 0-d arrays: integers that fit are passed as int32 and a 0-d
    tensor with shape (1,) (nnc bench puts the shape back).
    """
    out = {}
    for name, value in tensors.items():
        a = np.asarray(value)
        if a.dtype.kind in "iub":
            if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
                raise ValueError(f"integer tensor {name} does not fit NNCodec's int32")
            a = a.astype(np.int32)
        else:
            a = a.astype(np.float32)
        out[name] = a.reshape(1) if a.ndim == 0 else a
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model file (any format nnc reads)")
    ap.add_argument("qp", type=int, help="NNCodec's global qp (qp_density 2)")
    ap.add_argument("out", help="the stream to write")
    ap.add_argument("--dq", type=int, choices=(0, 1), default=1, help="dependent quantisation (default 1)")
    args = ap.parse_args(argv)
    python = oracle_python()
    if not python.exists():
        print(f"NNCodec oracle not available: no oracle python at {python} (run tools/setup_oracle.sh)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        tensors = _as_nncodec_input(read_model(args.model)[0])
        NNCodecOracle._available = True  # started once, below, instead of once to check and once to work
        try:
            oracle = NNCodecOracle()
        except OracleError as exc:
            print(f"NNCodec oracle not available: {python}: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        with oracle:
            stream = oracle.compress(tensors, qp=args.qp, qp_density=2, use_dq=bool(args.dq))
    except (NNCError, OracleError, OSError, ValueError) as exc:
        print(f"NNCodec failed on {args.model}: {str(exc).splitlines()[0][:300]}", file=sys.stderr)
        return 1
    write_atomic(args.out, stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
