"""Line and branch coverage of the decoder and the engine's decoding code over the conformance suite.

    python tools/conformance_coverage.py [SUITE_DIR] [--html DIR]

The normative decoding path is measured through the pure-Python engine (the
Cython engine implements the same functions and is checked against it by the
differential tests): nnc/decoder.py, nnc/container.py (parsing),
nnc/reconstruction.py and the decoding half of the Python engine (nnc/engine/python/).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DECODER_FILES = ["nnc/decoder.py", "nnc/container.py", "nnc/reconstruction.py", "nnc/_parallel.py",
                 "nnc/engine/python/arithmetic.py",
                 "nnc/engine/python/binarisation.py", "nnc/engine/python/scan.py", "nnc/engine/python/payload.py"]

# Encoder-side code in those files (building units, encoding payloads, estimating rates) is not
# part of the decoding path: a block whose first line matches is left out of the measurement.
ENCODER_SIDE = [
    r"class ArithmeticEncoder\b", r"class PayloadEncoder\b", r"def _coded_values\(", r"def _tensor_bins\(",
    r"def _skipped_rows\(", r"def _estimate_costs\(", r"def scan_permutation\(", r"def _choose_init_sets\(", r"def _cost_table\(",
    r"def bin_cost\(", r"def estimate_tensor_bits\(", r"def compute_entry_points\(", r"def binarise\(",
    r"def dq_coded_value\(", r"def zero_run_table\(", r"def rdoq_levels\(",
    r"def _build\(", r"def _encode\(", r"def build_", r"def _build_struct\(", r"def _complete\(",
    r"def _unflatten_ndu\(", r"def _size_prefix\(", r"def best_codebook_egk\(", r"def codebook_zero_offset\(",
    r"def parse_stream\(", r"_NDU_DEFAULTS = ",
]


# Application-side code in nnc/decoder.py that decodes nothing (state files, adding an update to a model,
# restoring a model file's shapes and dtypes): unit tests cover it; no stream can.
APPLICATION_SIDE = [
    r"def save\(", r"def load\(", r"def _meta\(", r"def _set_meta\(", r"def _extra_arrays\(",
    r"def apply_update\(", r"def restore_model_view\(",
]


# The decoding functions of the Cython engine (nnc/_engine.pyx): every other top-level definition there
# (the arithmetic encoder, bin sinks, payload encoding, rate estimation, RDOQ, the trellis) is encoder-side.
CYTHON_DECODING = {
    "ctx_init", "ctx_reset", "ctx_update", "prob_class", "context_count", "_check_edition", "make_layout",
    "make_shape", "first_range_forced", "has_row_flags", "walk_start", "walk_rows", "walk_next", "skip_row_states",
    "block_row_count", "neighbour_class", "sig_context", "sign_context", "gtx_context", "init_signalled_contexts",
    "next_byte", "decode_bin", "decode_bypass", "decode_bypass_bits", "decode_terminate", "decoder_position",
    "decoder_seek", "decode_value", "contexts_reset", "decode_tensor_data", "_check_tensor_args", "_as_array",
    "PayloadDecoder",
}

_TOP_LEVEL = re.compile(r"^(?:cdef\s+class\s+(\w+)|class\s+(\w+)|(?:cp?def|def)\b[^=(]*?(\w+)\s*\()")


def cython_decoding_lines(path: Path) -> dict:
    """{line number: name of its top-level definition} for the decoding definitions of a .pyx file."""
    lines, current, out = path.read_text().splitlines(), None, {}
    for number, text in enumerate(lines, 1):
        if text and not text[0].isspace() and not text.startswith("#"):
            m = _TOP_LEVEL.match(text)
            current = next((g for g in m.groups() if g), None) if m else None
        if current in CYTHON_DECODING:
            out[number] = current
    return out


def cython_report(cov, missing: bool) -> float:
    """Line coverage of the decoding functions of nnc/_engine.pyx (Cython.Coverage gives lines, not branches)."""
    pyx = REPO / "nnc" / "_engine.pyx"
    decoding = cython_decoding_lines(pyx)
    _, statements, _, not_run, _ = cov.analysis2(str(pyx))
    statements = [n for n in statements if n in decoding]
    not_run = [n for n in not_run if n in decoding]
    if not statements:
        raise SystemExit("no line of nnc/_engine.pyx was traced: build the engine with NNC_CYTHON_COVERAGE=1 "
                         "(python setup.py build_ext --inplace) first")
    share = 100.0 * (len(statements) - len(not_run)) / len(statements)
    print(f"nnc/_engine.pyx (decoding functions): {len(statements)} lines, {len(not_run)} missed, {share:.1f} %")
    if missing:
        for n in not_run:
            print(f"  {n}: {decoding[n]}")
    return share


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?", default=str(REPO / "conformance"))
    ap.add_argument("--html", help="also write an HTML report to this directory")
    ap.add_argument("--missing", action="store_true", help="list the lines not covered")
    ap.add_argument("--cython", action="store_true",
                    help="decode with the Cython engine instead and also report its decoding lines (needs an engine "
                    "built with NNC_CYTHON_COVERAGE=1)")
    ap.add_argument("--jobs", type=int, default=1, help="measure in this many processes (streams split among them)")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # "I/N": one process of --jobs N
    ap.add_argument("--data-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cython:
        return main_cython(args)
    if args.jobs > 1:
        return main_jobs(args)
    cov = _python_coverage(args.data_file)
    cov.start()
    results = _decode_suite(args.suite, args.part)
    cov.stop()
    if args.part:
        cov.save()
        print(json.dumps([[r.name, r.group, r.passed, r.detail, r.seconds] for r in results]))
        return 0
    return _report(cov, results, args)


def _python_coverage(data_file=None):
    import coverage

    cov = coverage.Coverage(branch=True, include=[str(REPO / f) for f in DECODER_FILES], data_file=data_file)
    cov.exclude("pragma: no cover")
    for pattern in ENCODER_SIDE + APPLICATION_SIDE:
        cov.exclude(pattern)
    return cov


def _decode_suite(suite, part=None):
    """Each tensor on its own from its entry points; then the whole stream through every API path
    (decode_with_info; threads with block rows in threads, into caller arrays; iter_tensors; entry points used).
    ``part`` "I/N": only the I-th of N shares of the streams (a sequence's streams stay together)."""
    from nnc.verify import verify_suite

    names = None
    if part:
        i, n = (int(x) for x in part.split("/"))
        entries = json.loads((Path(suite) / "manifest.json").read_text())["streams"]
        keys = list(dict.fromkeys((e.get("sequence") or {}).get("id") or e["name"] for e in entries))
        mine = set(keys[i::n])
        names = [e["name"] for e in entries if ((e.get("sequence") or {}).get("id") or e["name"]) in mine]
    return verify_suite(suite, "nnc-python-random-access", names=names) + verify_suite(
        suite, "nnc-python-api", names=names)


def main_jobs(args) -> int:
    """Run --jobs processes over shares of the suite and combine their coverage data."""
    import subprocess
    import tempfile

    from nnc.verify import Result

    with tempfile.TemporaryDirectory(prefix="nnc-coverage-") as tmp:
        procs = [subprocess.Popen([sys.executable, __file__, args.suite, "--part", f"{i}/{args.jobs}",
                                   "--data-file", str(Path(tmp) / f"part{i}")], stdout=subprocess.PIPE, text=True)
                 for i in range(args.jobs)]
        results = []
        for p in procs:
            out, _ = p.communicate()
            if p.returncode:
                raise SystemExit(f"a measuring process failed (status {p.returncode})")
            results += [Result(*r) for r in json.loads(out.strip().splitlines()[-1])]
        cov = _python_coverage(str(Path(tmp) / "combined"))
        cov.combine([str(Path(tmp) / f"part{i}") for i in range(args.jobs)])
        return _report(cov, results, args)


def _report(cov, results, args) -> int:
    from nnc.verify import format_table

    failed = [r for r in results if not r.passed]
    if failed:
        print(format_table(failed))
    print(f"suite: {len(results) - len(failed)}/{len(results)} stream decodings passed with the Python engine "
          "(tensor by tensor, and whole through every API path)\n")
    total = cov.report(show_missing=args.missing, skip_covered=False)
    if args.html:
        cov.html_report(directory=args.html)
    print(f"\ntotal decoder coverage (lines and branches): {total:.1f} %")
    return 1 if failed else 0


def main_cython(args) -> int:
    """The suite through the Cython engine: the decoding lines of nnc/_engine.pyx, traced by Cython.Coverage."""
    import coverage

    files = [str(REPO / f) for f in DECODER_FILES if "engine/python" not in f] + [str(REPO / "nnc" / "_engine.pyx")]
    cov = coverage.Coverage(include=files)
    cov.set_option("run:plugins", ["Cython.Coverage"])
    cov.start()
    from nnc.verify import format_table, verify_suite

    results = verify_suite(args.suite, "nnc-random-access") + verify_suite(args.suite, "nnc-api")
    cov.stop()
    failed = [r for r in results if not r.passed]
    if failed:
        print(format_table(failed))
    print(f"suite: {len(results) - len(failed)}/{len(results)} stream decodings passed with the Cython engine\n")
    share = cython_report(cov, args.missing)
    print(f"\nCython engine decoding coverage (lines): {share:.1f} %")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
