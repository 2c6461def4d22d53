#!/usr/bin/env bash
# Fetches NVRTC and the CUDA headers its kernels include (cuda_bf16.h, mma.h and crt/, the CCCL
# headers) from NVIDIA's PyPI wheels into DEST (default .cache/cuda-nvrtc, gitignored), for the
# compile-only CUDA device (models/src/cuda/compile_only.rs), which compiles every CUDA kernel
# of the decoder on a machine without a GPU. No GPU, driver or CUDA toolkit is needed.
#
# Afterwards: LD_LIBRARY_PATH=DEST/lib CUDA_PATH=DEST. Idempotent: does nothing when DEST already
# holds both. Usage: scripts/fetch-nvrtc.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.cache/cuda-nvrtc}"
if [ -e "$dest/lib/libnvrtc.so.13" ] && [ -e "$dest/include/crt/mma.h" ]; then
    echo "fetch-nvrtc: $dest already holds NVRTC and the CUDA headers"
    exit 0
fi
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
# One CUDA 13 release: NVRTC, the runtime headers, crt/ (a wheel of its own since CUDA 13), and
# CCCL (cuda/barrier, cuda/pipeline), which cubecl looks for in include/cccl.
python3 -m pip download --quiet --no-deps -d "$wheels" \
    "nvidia-cuda-nvrtc==13.0.88" "nvidia-cuda-runtime==13.0.96" \
    "nvidia-cuda-crt==13.0.88" "nvidia-cuda-cccl==13.0.85"
rm -rf "$dest.part"
mkdir -p "$dest.part"
python3 - "$dest.part" "$wheels"/*.whl <<'PY'
import os, shutil, sys, zipfile
out, wheels = sys.argv[1], sys.argv[2:]
prefix = "nvidia/cu13/"
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if not member.startswith(prefix) or member.endswith("/"):
                continue
            rel = member[len(prefix):]
            # The `.alt` libraries are NVRTC built another way; one is enough.
            wanted = rel.startswith("include/") or rel.startswith("lib/libnvrtc")
            if not wanted or ".alt." in rel:
                continue
            path = os.path.join(out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with z.open(member) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
rm -rf "$dest"
mv "$dest.part" "$dest"
echo "fetch-nvrtc: wrote $dest ($(du -sh "$dest" | cut -f1)); use LD_LIBRARY_PATH=$dest/lib CUDA_PATH=$dest"
