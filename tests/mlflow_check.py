"""Reads a run that `drpo-host export --format mlflow` wrote, with MLflow's own client, and prints
what a user of MLflow sees of it as one JSON object (tests/run_outputs.rs compares it with the
run's result.json).

Usage: python mlflow_check.py STORE_DIR EXPERIMENT
"""

import json
import os
import sys
import tempfile

# MLflow 3 keeps its file store in maintenance mode behind this switch; the layout is the one
# `mlflow migrate-filestore` moves to a database.
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"

from mlflow.tracking import MlflowClient  # noqa: E402

store, experiment_name = sys.argv[1], sys.argv[2]
client = MlflowClient(tracking_uri=f"file://{store}")
experiment = client.get_experiment_by_name(experiment_name)
runs = client.search_runs([experiment.experiment_id])
seen = []
for run in runs:
    history = {
        key: [[m.step, m.value] for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
    }
    with tempfile.TemporaryDirectory() as scratch:
        prompt_path = client.download_artifacts(run.info.run_id, "best_prompt.txt", scratch)
        best_prompt = open(prompt_path).read()
    seen.append({
        "name": run.info.run_name,
        "status": run.info.status,
        "params": run.data.params,
        "metrics": history,
        "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
        "best_prompt": best_prompt,
    })
print(json.dumps({"experiments": sorted(e.name for e in client.search_experiments()), "runs": seen}))
