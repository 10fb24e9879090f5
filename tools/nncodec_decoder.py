#!/usr/bin/env python3
"""NNCodec 2.1.3 as a decoder command for ``nnc verify`` (the decoder-command protocol).

    nnc verify conformance/ --decoder-command "python tools/nncodec_decoder.py"

The protocol (JSON lines on stdin/stdout) is documented in :class:`nnc.verify.CommandAdapter`.
This script only finds the oracle's Python (``$NNC_ORACLE_PYTHON`` or <repo>/.oracle-venv/bin/python,
set up by tools/setup_oracle.sh) and replaces itself with the oracle worker
(tools/oracle/nncodec_worker.py), which speaks the protocol: its ``decompress`` request is the
protocol's request, and it keeps NNCodec's incremental state per sequence id.  When the oracle
is not set up it says why on stderr and exits with status 2 (``nnc verify`` then reports that
the command did not announce itself).
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))  # (an installed nnc, with its compiled engine, comes first)

from tools.oracle.client import WORKER, NNCodecOracle, oracle_python  # noqa: E402


def main() -> int:
    if not NNCodecOracle.available():
        print(f"NNCodec oracle not available: {NNCodecOracle.reason}", file=sys.stderr)
        return 2
    python = str(oracle_python())
    os.execv(python, [python, str(WORKER)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
