# Sourced by the scripts that need llama.cpp as PyPI packages it (`llama-cpp-python[server]`,
# with the official `openai` client beside it): check-real-server and bench-cpu-decoder.
# `llama_venv` makes the venv once in $LLAMA_VENV (default .cache/llama-server-venv under the
# checkout; the first time builds llama.cpp from source, 10-15 minutes on 2 cores) and sets
# `venv`. LLAMA_CMAKE_ARGS overrides the build's CMake flags (default -DGGML_NATIVE=OFF: AVX2 and
# FMA but nothing tuned to this CPU, so the venv moves between x86-64 machines).
source "$(dirname "${BASH_SOURCE[0]}")/retry.sh"
source "$(dirname "${BASH_SOURCE[0]}")/python-pins.sh"

llama_venv() {
    venv="${LLAMA_VENV:-$PWD/.cache/llama-server-venv}"
    if llama_venv_ready; then
        echo "$(basename "$0"): venv $venv ready (llama-cpp-python $llama_version)"
        return
    fi
    echo "$(basename "$0"): building the venv $venv (llama-cpp-python $llama_version from source: 10-15 minutes)"
    local started
    started=$(date +%s)
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    retry nice -n 19 env CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
        "$venv/bin/pip" install --progress-bar off \
        "llama-cpp-python[server]==$llama_version" "openai==$openai_version"
    if ! llama_venv_ready; then
        echo "$(basename "$0"): the venv $venv was installed but does not import llama_cpp $llama_version" >&2
        return 1
    fi
    echo "$(basename "$0"): venv built in $(($(date +%s) - started)) s"
}

llama_venv_ready() {
    [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$llama_version" <<'PY' 2>/dev/null
import sys
import llama_cpp, llama_cpp.server.app, openai  # noqa: F401  (the server extra and the client)
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] else 1)
PY
}
