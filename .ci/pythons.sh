#!/usr/bin/env bash
# Build and smoke-test nnc on every CPython 3.9-3.13 this machine has (pyenv versions or
# python3.X on PATH): per version, a fresh venv, `pip install ".[test]"` (which builds the
# compiled engine), the bundled models encoded and decoded (.ci/smoke.py) and the tests
# marked `quick`.  The streams and decodings must be byte-identical across versions.
#
#   .ci/pythons.sh [WORKDIR]        (default .ci-pythons; made afresh)
#
# NNC_CI_JOBS (default 2) versions run at a time.  Exit status 0 when every present
# version passes and all agree; 1 otherwise.  A version that is not installed is reported
# and skipped; fewer than two versions tested is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
source tools/fresh_workdir.sh
fresh_workdir pythons.sh .ci-pythons "${1:-}"
jobs=${NNC_CI_JOBS:-2}

find_python() {  # the newest interpreter for version $1 (e.g. 3.9), or nothing
  local v=$1 p
  for p in $(ls -d "$HOME"/.pyenv/versions/"$v".* 2>/dev/null | sort -V -r); do
    [ -x "$p/bin/python$v" ] && { echo "$p/bin/python$v"; return; }
  done
  command -v "python$v" 2>/dev/null
}

test_version() {  # $1 version, $2 interpreter; output to $work/$1.log, status to $work/$1.status
  local v=$1 py=$2 venv="$work/venv-$1" src="$work/src-$1" start=$SECONDS
  {
    echo "--- Python $v ($py)"
    "$py" -m venv "$venv" || { echo "Python $v: FAILED to create a venv"; return 1; }
    # a copy of the checkout per version: pip builds in the source tree, and versions run in parallel
    mkdir -p "$src" && tar -C "$repo" --exclude=./.git --exclude='./.ci-*' --exclude=./.oracle-venv \
      --exclude=./build --exclude='*.so' --exclude=./docs/_build --exclude=.hypothesis -cf - . | tar -C "$src" -xf -
    # a non-editable install: the package and its engine are built for this version
    "$venv/bin/pip" install -q "$src[test]" >"$work/$v-pip.log" 2>&1 \
      || { echo "Python $v: FAILED to install nnc:"; grep -v "^WARNING: Location" "$work/$v-pip.log" | tail -n 20; return 1; }
    echo "installed in $((SECONDS - start)) s"
    # from outside the checkout, so that the installed package is the one imported
    (cd "$work" && "$venv/bin/python" "$src/.ci/smoke.py" "$work/smoke-$v.json" --expect-engine cython) \
      || { echo "Python $v: smoke test FAILED"; return 1; }
    # the venv's pytest (not `python -m pytest`, which would put the copy's nnc/ first on sys.path)
    (cd "$src" && "$venv/bin/pytest" -m quick -q -p no:cacheprovider) || { echo "Python $v: quick tests FAILED"; return 1; }
    echo "Python $v: passed in $((SECONDS - start)) s"
  } >"$work/$v.log" 2>&1
}

versions=()
for v in 3.9 3.10 3.11 3.12 3.13; do
  py=$(find_python "$v")
  if [ -z "$py" ]; then
    echo "--- Python $v: not installed, skipped"
    continue
  fi
  versions+=("$v")
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  ( test_version "$v" "$py"; echo $? >"$work/$v.status" ) &
done
wait

status=0
tested=()
for v in "${versions[@]}"; do
  cat "$work/$v.log"
  if [ "$(cat "$work/$v.status" 2>/dev/null)" = 0 ]; then tested+=("$v"); else status=1; fi
done
if [ "${#versions[@]}" -lt 2 ]; then
  echo "=== fewer than two Python versions present (${versions[*]:-none}): FAILED ==="
  exit 1
fi
if [ "${#tested[@]}" -ge 2 ]; then
  first=${tested[0]}
  for v in "${tested[@]:1}"; do
    if ! cmp -s "$work/smoke-$first.json" "$work/smoke-$v.json"; then
      echo "Python $v: streams or decodings DIFFER from Python $first:"
      diff "$work/smoke-$first.json" "$work/smoke-$v.json" | head -20
      status=1
    fi
  done
fi
if [ "$status" -eq 0 ]; then
  echo "=== Python ${tested[*]}: installed, smoke-tested, quick tests passed, identical bytes ==="
else
  echo "=== PYTHON VERSIONS: FAILED (passed: ${tested[*]:-none}; logs in $work) ==="
fi
exit "$status"
