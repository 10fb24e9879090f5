#!/usr/bin/env bash
# Set up NNCodec 2.1.3 as a black-box oracle in its own virtual environment.
# Usage: tools/setup_oracle.sh [VENV_DIR]   (default: .oracle-venv)
# Prints the venv's python path on success; exits non-zero (with a reason) on failure.
set -euo pipefail
venv="${1:-.oracle-venv}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import nncodec" 2>/dev/null; then
  echo "oracle: already installed in $venv" >&2
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0 "numpy<2" pybind11 >&2
"$venv/bin/pip" install -q "pandas<3" opencv-python-headless scikit-learn tqdm h5py pillow >&2
"$venv/bin/pip" install -q --no-deps nncodec==2.1.3 >&2
echo "oracle: installed NNCodec 2.1.3 in $venv" >&2
