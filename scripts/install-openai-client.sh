#!/usr/bin/env bash
# Installs the official `openai` Python client into .cache/openai-venv (tests/serve.rs drives
# `drpo-host serve` with it), once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/retry.sh
source scripts/lib/python-pins.sh
venv="$PWD/.cache/openai-venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$openai_version')" 2>/dev/null; then
  exit 0
fi
echo "installing the openai client $openai_version into $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
retry "$venv/bin/pip" install --quiet --progress-bar off "openai==$openai_version"
