#!/usr/bin/env bash
# Install nnc with the C compiler hidden (CC=false, so every compilation fails) and check
# that the build says so, installs anyway without the compiled engine, and that nnc then
# runs on the pure-Python engine: one warning at import, the bundled models encoded and
# decoded (.ci/smoke.py, bytes compared with a compiled run when one is given).
#
#   .ci/nocompiler.sh [WORKDIR] [REFERENCE_SMOKE_JSON]
#
# Exit status 0 when all of that holds, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
source tools/fresh_workdir.sh
fresh_workdir nocompiler.sh .ci-nocompiler "${1:-}"
reference=${2:+$(realpath -m -- "$2")}  # absolute: the checks below run from $work
mkdir -p "$work/src"
start=$SECONDS

fail() { echo "=== NO-COMPILER INSTALL: FAILED: $* (logs in $work) ==="; exit 1; }

# a copy without any built engine, so that nothing compiled can leak in
tar -C "$repo" --exclude=./.git --exclude='./.ci-*' --exclude=./.oracle-venv --exclude=./build \
  --exclude='*.so' --exclude=./docs/_build --exclude=.hypothesis -cf - . | tar -C "$work/src" -xf -
python3 -m venv "$work/venv" || fail "cannot create a venv"

# CC and CXX point at `false`: the compiler "exists" but every compilation fails
CC=false CXX=false LDSHARED=false "$work/venv/bin/pip" install -v "$work/src" >"$work/pip.log" 2>&1 \
  || fail "pip install failed without a compiler: $(grep -v '^WARNING: Location' "$work/pip.log" | tail -n 3)"
grep -q "compiled engine nnc._engine could NOT be built" "$work/pip.log" \
  || fail "the build did not say that it could not compile the engine"
grep -Eq "^(false|error: command 'false' failed)|command 'false' failed|CompileError" "$work/pip.log" \
  || fail "no sign in the build log that compiling was attempted and failed (was the compiler really hidden?)"
echo "build without a compiler: installed, and said so:"
grep -A2 "could NOT be built" "$work/pip.log" | head -n 3 | sed 's/^/  /'

cd "$work" || exit 1
"$work/venv/bin/python" - <<'EOF' || fail "import check"
import importlib.util, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import nnc
    import nnc.engine
# (after the import: find_spec of a submodule imports the package, and with it the warning)
assert importlib.util.find_spec("nnc._engine") is None, "nnc._engine was built after all"
fallback = [w for w in caught if "engine" in str(w.message)]
print(f"import nnc: {len(fallback)} engine warning(s): {[str(w.message)[:100] for w in fallback]}")
assert len(fallback) == 1, "expected exactly one warning about the missing compiled engine"
EOF
"$work/venv/bin/nnc" --version || fail "nnc --version"
"$work/venv/bin/python" "$work/src/.ci/smoke.py" "$work/smoke.json" --expect-engine python \
  || fail "smoke test on the pure-Python engine"
if [ -n "$reference" ]; then
  [ -f "$reference" ] || fail "the reference smoke output $reference does not exist"
  cmp -s "$reference" "$work/smoke.json" \
    || { diff "$reference" "$work/smoke.json" | head -20; fail "the pure-Python engine's bytes differ from $reference"; }
  echo "pure-Python engine: the same bytes as $reference"
fi
echo "=== no-compiler install: passed in $((SECONDS - start)) s ==="
