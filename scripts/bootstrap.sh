#!/usr/bin/env bash
# Installs what a fresh machine lacks: uv (from PyPI, into ~/.local) and the locked workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1 && [ ! -x "$HOME/.local/bin/uv" ]; then
  echo "bootstrap: installing uv from PyPI" >&2
  python3 -m pip install --quiet --user 'uv>=0.5' || python3 -m pip install --quiet 'uv>=0.5'
fi
UV=$(command -v uv 2>/dev/null || echo "$HOME/.local/bin/uv")
"$UV" sync --frozen --quiet
