# shellcheck shell=bash
# Sourced by infra/local/*.sh: finds the lexforge CLI (the repo's .venv first, then PATH).
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -x "$_root/.venv/bin/lexforge" ]; then
  LEXFORGE="$_root/.venv/bin/lexforge"
elif command -v lexforge >/dev/null 2>&1; then
  LEXFORGE="$(command -v lexforge)"
else
  echo "lexforge CLI not found: run 'make install' in $_root (creates .venv) or 'pip install -e .'" >&2
  exit 127
fi
export LEXFORGE
