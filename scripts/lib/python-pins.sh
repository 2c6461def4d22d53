# The Python packages from PyPI that scripts and tests check the project against, pinned once:
# llama.cpp's server and bindings (check-real-server, bench-cpu-decoder, bench-serve) and the
# official `openai` client (the same, and the serve test).
llama_version="0.3.36"
openai_version="3.63.0"
