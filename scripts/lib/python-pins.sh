# The Python packages from PyPI that scripts and tests check the project against, pinned once:
# llama.cpp's server and bindings (check-real-server, bench-cpu-decoder, bench-serve) and the
# official `openai` client (the same, and the serve test).
llama_version="0.3.36"
openai_version="3.63.0"
# MLflow's client (its "skinny" package: the tracking client without the server's dependencies),
# which tests/run_outputs.rs reads `drpo-host export --format mlflow` back with.
mlflow_version="3.18.0"
