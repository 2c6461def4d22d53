#!/usr/bin/env bash
# Installs MLflow's client (mlflow-skinny) into .cache/mlflow-venv (tests/run_outputs.rs reads an
# exported run back with it), once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/retry.sh
source scripts/lib/python-pins.sh
source scripts/lib/venv.sh
venv_install "$PWD/.cache/mlflow-venv" mlflow mlflow-skinny "$mlflow_version"
