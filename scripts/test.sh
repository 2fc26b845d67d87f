#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this through
# `make test`): setup, lint, then every test, end-to-end ones included.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check coverage_exporter
.venv/bin/mypy
set +e
# The slowest tests are printed: the cold-run budget (README) is mostly theirs.
.venv/bin/pytest -ra --durations=30 "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  # pytest's "no tests collected" is a broken suite for us, not a pass.
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit $rc
