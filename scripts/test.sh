#!/usr/bin/env bash
# The test command: lint, format check, strict typing, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check src tests benchmarks examples
ruff format --check src tests benchmarks examples
mypy --strict src
mypy --config-file mypy-tests.ini tests
set +e
python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating as a failure" >&2
    exit 1
fi
exit "$status"
