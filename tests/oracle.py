"""Re-export of the NNCodec oracle client (tools/oracle/client.py) for the tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.oracle.client import NNCodecOracle, OracleError  # noqa: E402,F401
