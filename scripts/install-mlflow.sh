#!/usr/bin/env bash
# Installs MLflow's client (mlflow-skinny) into .cache/mlflow-venv (tests/run_outputs.rs reads an
# exported run back with it), once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/retry.sh
source scripts/lib/python-pins.sh
venv="$PWD/.cache/mlflow-venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import mlflow, sys; sys.exit(mlflow.__version__ != '$mlflow_version')" 2>/dev/null; then
  exit 0
fi
echo "installing mlflow-skinny $mlflow_version into $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
retry "$venv/bin/pip" install --quiet --progress-bar off "mlflow-skinny==$mlflow_version"
