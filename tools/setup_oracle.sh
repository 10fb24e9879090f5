#!/usr/bin/env bash
# Set up NNCodec 2.1.3 as a black-box oracle in its own virtual environment.
# Usage: tools/setup_oracle.sh [VENV_DIR]   (default: .oracle-venv in the repository, where the tests look)
# Prints the venv's python path on success; exits non-zero (with a reason) on failure.
set -euo pipefail
case "${1:-}" in
  -h|--help)
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
    exit 0 ;;
  -*)
    echo "setup_oracle.sh: unknown option $1 (usage: tools/setup_oracle.sh [VENV_DIR])" >&2
    exit 2 ;;
esac
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$repo/.oracle-venv}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import nncodec" 2>/dev/null; then
  echo "oracle: already installed in $venv" >&2
  echo "$venv/bin/python"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0 "numpy<2" pybind11 >&2
"$venv/bin/pip" install -q "pandas<3" opencv-python-headless scikit-learn tqdm h5py pillow >&2
"$venv/bin/pip" install -q --no-deps nncodec==2.1.3 >&2
echo "oracle: installed NNCodec 2.1.3 in $venv" >&2
echo "$venv/bin/python"
