#!/usr/bin/env bash
# Fetches NVRTC and the CUDA headers its kernels include (cuda_bf16.h, mma.h and crt/, the CCCL
# headers), and ptxas, from NVIDIA's PyPI wheels into DEST (default .cache/cuda-nvrtc,
# gitignored), for the compile-only CUDA device (models/src/cuda/compile_only.rs), which
# compiles every CUDA kernel of the decoder on a machine without a GPU, and for
# scripts/kernel-resources.sh (registers and spills per kernel). No GPU, driver or CUDA toolkit
# is needed.
#
# Afterwards: LD_LIBRARY_PATH=DEST/lib CUDA_PATH=DEST. Idempotent: does nothing when DEST holds
# the pinned versions already. Usage: scripts/fetch-nvrtc.sh [DEST]
set -euo pipefail
source "$(dirname "$0")/lib/retry.sh"
dest="$(realpath -m "${1:-$(dirname "$0")/../.cache/cuda-nvrtc}")"
# One CUDA 13.0 release (the H100 machines of scripts/gpu-check.sh run CUDA 13.0): NVRTC, the
# runtime headers, crt/ (a wheel of its own since CUDA 13), CCCL (cuda/barrier, cuda/pipeline),
# which cubecl looks for in include/cccl, and nvcc's wheel for its ptxas.
wheels=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88
        nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvcc==13.0.88)
stamp="${wheels[*]}"
if [ -f "$dest/.wheels" ] && [ "$(cat "$dest/.wheels")" = "$stamp" ]; then
    echo "fetch-nvrtc: $dest already holds ${wheels[*]}"
    exit 0
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "fetch-nvrtc: needs python3 with pip (Debian: apt-get install python3-pip)" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
work="$(mktemp -d "$dest.XXXXXX")"
trap 'rm -rf "$work"' EXIT
retry python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheels" "${wheels[@]}"
python3 - "$work/out" "$work"/wheels/*.whl <<'PY'
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
            # nvcc's wheel brings headers too; the runtime's are the ones wanted.
            wanted = (rel.startswith("include/") and "nvcc" not in wheel) \
                or rel.startswith("lib/libnvrtc") or rel == "bin/ptxas"
            if not wanted or ".alt." in rel:
                continue
            path = os.path.join(out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with z.open(member) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if rel.startswith("bin/"):
                os.chmod(path, 0o755)
PY
for needed in lib/libnvrtc.so.13 include/cuda_bf16.h include/crt/mma.h include/cccl/cuda/barrier \
    bin/ptxas; do
    if [ ! -e "$work/out/$needed" ]; then
        echo "fetch-nvrtc: the wheels held no $needed (has their layout changed?)" >&2
        exit 1
    fi
done
echo "$stamp" > "$work/out/.wheels"
rm -rf "$dest"
mv "$work/out" "$dest"
echo "fetch-nvrtc: wrote $dest ($(du -sh "$dest" | cut -f1)); use LD_LIBRARY_PATH=$dest/lib CUDA_PATH=$dest"
