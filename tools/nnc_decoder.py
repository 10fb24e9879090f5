#!/usr/bin/env python3
"""Reference decoder, in the style of MPEG reference software: a stream in, tensors and hashes out.

    python tools/nnc_decoder.py -b STREAM.nnr [-o DECODED.npz] [--engine python] [--entry-points verify]

Prints one line per tensor: name, dtype, shape and the SHA-256 of its C-order little-endian
bytes (the hashes of conformance/manifest.json), then the whole-output hash. Exit status 0
on success, 1 when the stream is rejected (the error names the spec clause and byte offset).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nnc  # noqa: E402
from nnc.formats import npz_bytes, write_atomic  # noqa: E402
from nnc.verify import output_sha256, tensor_sha256  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-b", "--bitstream", required=True, help="input NNC stream")
    ap.add_argument("-o", "--output", help="write the decoded tensors to this .npz")
    ap.add_argument("--engine", choices=("cython", "python"), help="entropy-coding engine")
    ap.add_argument("--entry-points", choices=("ignore", "use", "verify"), default="ignore")
    args = ap.parse_args(argv)
    try:
        tensors = nnc.decode(args.bitstream, engine=args.engine, entry_points=args.entry_points)
    except nnc.NNCError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, a in tensors.items():
        print(f"{tensor_sha256(a)}  {a.dtype!s:8} {'x'.join(map(str, a.shape)):>16}  {name}")
    print(f"{output_sha256(tensors)}  (whole output, {len(tensors)} tensors)")
    if args.output:
        write_atomic(args.output, npz_bytes(tensors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
