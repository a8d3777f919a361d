#!/usr/bin/env bash
# The README's test command (`make test`): the whole pytest suite against real servers
# that the fixtures start on free ports. pytest's exit code 5 ("no tests collected")
# is a failure here: a suite that silently runs nothing must not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
UV=$(command -v uv 2>/dev/null || echo "$HOME/.local/bin/uv")
"$UV" run --frozen pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$rc"
