"""Line and branch coverage of the decoder and the engine's decoding code over the conformance suite.

    python tools/conformance_coverage.py [SUITE_DIR] [--html DIR]

The normative decoding path is measured through the pure-Python engine (the
Cython engine implements the same functions and is checked against it by the
differential tests): nnc/decoder.py, nnc/container.py (parsing),
nnc/reconstruction.py and the decoding half of the Python engine (nnc/engine/python/).
"""

from __future__ import annotations

import argparse
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


def main(argv=None) -> int:
    import coverage

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?", default=str(REPO / "conformance"))
    ap.add_argument("--html", help="also write an HTML report to this directory")
    ap.add_argument("--missing", action="store_true", help="list the lines not covered")
    args = ap.parse_args(argv)
    cov = coverage.Coverage(branch=True, include=[str(REPO / f) for f in DECODER_FILES])
    cov.exclude("pragma: no cover")
    for pattern in ENCODER_SIDE + APPLICATION_SIDE:
        cov.exclude(pattern)
    cov.start()
    from nnc.verify import format_table, verify_suite

    # each tensor on its own from its entry points; then the whole stream through every API path
    # (decode_with_info; threads with block rows in threads, into caller arrays; iter_tensors; entry points used)
    results = verify_suite(args.suite, "nnc-python-random-access") + verify_suite(args.suite, "nnc-python-api")
    cov.stop()
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


if __name__ == "__main__":
    sys.exit(main())
