#!/usr/bin/env python3
"""Reference encoder, in the style of MPEG reference software: a model in, a stream out.

    python tools/nnc_encoder.py -i MODEL -b STREAM.nnr [--qp -38] [--no-dq] [--scan-order 2] [--profile 0]

Prints, per tensor, the SHA-256 of the reconstruction every conforming decoder must
produce (so a decoder under test can be checked against the encoder directly), then the
whole-output hash.
"""

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # (an installed nnc, with its compiled engine, comes first)

from nnc.encoder import Encoder  # noqa: E402
from nnc.errors import NNCError, about_file  # noqa: E402
from nnc.formats import read_model, refuse_overwriting, write_atomic  # noqa: E402
from nnc.verify import output_sha256, tensor_sha256  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-i", "--input", required=True, help="model: safetensors, PyTorch, ONNX or npz")
    ap.add_argument("-b", "--bitstream", required=True, help="output NNC stream")
    ap.add_argument("--qp", type=int, default=-38)
    ap.add_argument("--qp-density", type=int, default=2)
    ap.add_argument("--no-dq", action="store_true", help="uniform quantisation instead of DQ")
    ap.add_argument("--scan-order", type=int, default=0)
    ap.add_argument("--n-gtx", type=int, default=11)
    ap.add_argument("--profile", type=int, default=1, choices=(0, 1))
    ap.add_argument("--codebook", choices=("off", "on", "auto", "few"), default="off",
                    help="codebook mode (spec A.8): off (default here, as the reference software's; nnc encode's "
                    "default is few), on (always), auto, few")
    args = ap.parse_args(argv)
    try:  # the options first: their errors are not the model's
        encoder = Encoder(qp=args.qp, qp_density=args.qp_density, dq=not args.no_dq, scan_order=args.scan_order,
                          n_gtx=args.n_gtx, profile=args.profile,
                          codebook={"off": False, "on": True, "auto": "auto", "few": "few"}[args.codebook])
        refuse_overwriting(args.bitstream, {"model": args.input})
    except NNCError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        tensors, _ = read_model(args.input)
        result = encoder.encode(tensors)
    except (NNCError, OSError) as exc:
        print(f"error: {about_file(args.input, exc)}", file=sys.stderr)
        return 1
    try:
        write_atomic(args.bitstream, result.stream)
    except OSError as exc:
        print(f"error: {about_file(args.bitstream, exc)}", file=sys.stderr)
        return 1
    recon = result.reconstruction
    for name, a in recon.items():
        print(f"{tensor_sha256(a)}  {a.dtype!s:8} {'x'.join(map(str, a.shape)):>16}  {name}")
    print(f"{output_sha256(recon)}  (whole output, {len(recon)} tensors, {len(result.stream)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
