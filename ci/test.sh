#!/usr/bin/env bash
# Run the project's tests: unit tests, then the integration tests that boot real guests and build real code.
# Extra arguments go to pytest (for example: bash ci/test.sh -m "not slow").
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p ci-artifacts
PYTHON=.venv/bin/python
[ -x "$PYTHON" ] || { echo "ci/test.sh: no .venv here; run: bash ci/setup.sh" >&2; exit 2; }
"$PYTHON" -m pytest tests -v -rs --durations=15 --junitxml=ci-artifacts/project-tests.xml "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "ci/test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
