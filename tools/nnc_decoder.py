#!/usr/bin/env python3
"""Reference decoder, in the style of MPEG reference software: a stream in, tensors and hashes out.

    python tools/nnc_decoder.py -b STREAM.nnr [-o DECODED.npz] [--engine python] [--entry-points verify]
    python tools/nnc_decoder.py -b BASE.nnr UPDATE1.nnr ... [--state RECEIVER.state]
    python tools/nnc_decoder.py --serve [--engine python] [--entry-points use]

Prints one line per tensor: name, dtype, shape and the SHA-256 of its C-order little-endian
bytes (the hashes of conformance/manifest.json), then the whole-output hash. Several
streams are an incremental sequence (spec 14), decoded in order with one decoder state
(kept in a state file with --state); each gets its own lines, and -o names the last one's
output. Exit status 0 on success, 1 when a stream is rejected (the error names the spec
clause and byte offset).

With --serve it is a decoder command for ``nnc verify --decoder-command``: it speaks the
JSON-lines protocol of nnc.verify.CommandAdapter on stdin/stdout (one decoder state per
sequence id), e.g. to verify nnc as an external program exactly as another decoder would be.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # (an installed nnc, with its compiled engine, comes first)

import nnc  # noqa: E402
from nnc.errors import about_file  # noqa: E402
from nnc.formats import npz_bytes, refuse_overwriting, write_atomic  # noqa: E402
from nnc.verify import output_sha256, tensor_sha256  # noqa: E402


def serve(engine, entry_points, stdin=sys.stdin, stdout=sys.stdout) -> int:
    """Answer decoder-command requests (nnc.verify.CommandAdapter) until stdin closes."""
    request_id = [None]  # echoed in the reply to the request being answered

    def reply(obj):
        if request_id[0] is not None:
            obj = dict(obj, id=request_id[0])
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()

    states = {}
    reply({"ok": True, "ready": True})
    for line in stdin:
        if not line.strip():
            continue
        request_id[0] = None
        try:
            req = json.loads(line)
            request_id[0] = req.get("id") if isinstance(req, dict) else None
            seq = req.get("sequence")
            state = states.setdefault(seq, nnc.DecoderState()) if seq else None
            tensors = nnc.decode(req["in"], engine=engine, entry_points=entry_points, state=state)
            write_atomic(req["npz"], npz_bytes(tensors))
            reply({"ok": True, "names": list(tensors)})
        except nnc.NNCError as exc:
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        except (ValueError, KeyError, TypeError, OSError) as exc:  # (a stream that cannot be read: keep serving)
            reply({"ok": False, "error": f"bad request: {exc}"})
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-b", "--bitstream", nargs="+",
                    help="input NNC stream, or the streams of an incremental sequence in order")
    ap.add_argument("-o", "--output", help="write the decoded tensors (of the last stream) to this .npz")
    ap.add_argument("--engine", choices=("cython", "python"), help="entropy-coding engine")
    ap.add_argument("--entry-points", choices=("ignore", "use", "verify"), default="ignore")
    ap.add_argument("--state", help="decoder state file carried across runs (created if missing)")
    ap.add_argument("--serve", action="store_true",
                    help="answer nnc verify --decoder-command requests on stdin/stdout")
    args = ap.parse_args(argv)
    if args.serve:
        return serve(args.engine, args.entry_points)
    if not args.bitstream:
        ap.error("give -b STREAM (or --serve)")
    try:
        refuse_overwriting(args.output, {"stream": args.bitstream, "state file": args.state})
        refuse_overwriting(args.state, {"stream": args.bitstream})
    except FileExistsError as exc:
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    where = args.state                           # the file an error is about
    try:
        state = nnc.DecoderState()
        if args.state and Path(args.state).exists():
            state = nnc.DecoderState.load(args.state)
        for path in args.bitstream:
            where = path
            tensors = nnc.decode(path, engine=args.engine, entry_points=args.entry_points, state=state)
            if len(args.bitstream) > 1:
                print(f"# {path}")
            for name, a in tensors.items():
                print(f"{tensor_sha256(a)}  {a.dtype!s:8} {'x'.join(map(str, a.shape)):>16}  {name}")
            print(f"{output_sha256(tensors)}  (whole output, {len(tensors)} tensors)")
    except (nnc.NNCError, OSError) as exc:
        print(f"error: {about_file(where, exc)}", file=sys.stderr)
        return 1
    where = args.output
    try:
        if args.output:
            write_atomic(args.output, npz_bytes(tensors))
        where = args.state
        if args.state:
            state.save(args.state)
    except OSError as exc:
        print(f"error: {about_file(where, exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
