#!/usr/bin/env bash
# Lint, format check and type check of nnc/: exactly what CI (.ci/run) and pre-commit run.
# Settings: pyproject.toml ([tool.ruff], [tool.mypy]). Tools: pip install -e ".[lint]".
# Exit status: 0 when all three pass, 1 otherwise (each check runs, so one run shows all).
set -uo pipefail
cd "$(dirname "$0")/.."

status=0
run() {
  echo "--- $*"
  "$@" || status=1
}
run ruff check nnc
run ruff format --check --output-format concise nnc
run mypy            # files = ["nnc"] in pyproject.toml
if [ "$status" -ne 0 ]; then
  echo "lint: FAILED (ruff format nnc fixes formatting; ruff check --fix nnc fixes what it can)"
else
  echo "lint: passed"
fi
exit "$status"
