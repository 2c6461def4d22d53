#!/usr/bin/env bash
# Installs the official `openai` Python client into .cache/openai-venv (tests/serve.rs drives
# `drpo-host serve` with it), once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/retry.sh
source scripts/lib/python-pins.sh
source scripts/lib/venv.sh
venv_install "$PWD/.cache/openai-venv" openai openai "$openai_version"
