"""Line and branch coverage of the decoder and the engine's decoding code over the conformance suite.

    python tools/conformance_coverage.py [SUITE_DIR] [--html DIR]

The normative decoding path is measured through the pure-Python engine (the
Cython engine implements the same functions and is checked against it by the
differential tests): nnc/decoder.py, nnc/container.py (parsing),
nnc/reconstruction.py and the decoding half of nnc/_pyengine.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DECODER_FILES = ["nnc/decoder.py", "nnc/container.py", "nnc/reconstruction.py", "nnc/_pyengine.py"]


def main(argv=None) -> int:
    import coverage

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?", default=str(REPO / "conformance"))
    ap.add_argument("--html", help="also write an HTML report to this directory")
    args = ap.parse_args(argv)
    cov = coverage.Coverage(branch=True, include=[str(REPO / f) for f in DECODER_FILES])
    cov.start()
    from nnc.verify import format_table, verify_suite

    results = verify_suite(args.suite, "nnc-python")
    cov.stop()
    failed = [r for r in results if not r.passed]
    if failed:
        print(format_table(failed))
    print(f"suite: {len(results) - len(failed)}/{len(results)} streams passed with the Python engine\n")
    total = cov.report(show_missing=False, skip_covered=False)
    if args.html:
        cov.html_report(directory=args.html)
    print(f"\ntotal decoder coverage (lines and branches): {total:.1f} %")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
