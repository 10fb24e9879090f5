"""The ``nnc`` command's entry point: Ctrl-C while the command line is still being imported is one line too.

``import nnc`` imports no numpy, so this runs within milliseconds of Python's start; the rest of the
command line (:func:`nnc.cli.main`, which answers signals itself) is imported inside its guard.
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    """Run ``nnc`` (:func:`nnc.cli.main`); a KeyboardInterrupt before it answers signals is an error line, exit 1."""
    try:
        from .cli import main as cli_main

        return cli_main(argv)
    except KeyboardInterrupt:
        print("nnc: error: interrupted", file=sys.stderr)
        return 1
