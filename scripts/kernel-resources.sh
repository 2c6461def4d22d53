#!/usr/bin/env bash
# Registers and spills of each kernel that the compile-only CUDA device wrote out
# (DRPO_CUDA_KERNEL_DIR=DIR drpo-model-tool ... built with the `cuda-compile-only` feature), as
# ptxas reports them for an H100 (sm_90a). A kernel that spills registers to local memory reads
# and writes memory that its work does not need: the script fails if one does. No GPU needed.
#
# Usage: scripts/kernel-resources.sh DIR [PTXAS]   (PTXAS defaults to $CUDA_PATH/bin/ptxas, as
# scripts/fetch-nvrtc.sh lays it out, else .cache/cuda-nvrtc/bin/ptxas)
set -euo pipefail
dir="${1:?usage: scripts/kernel-resources.sh DIR [PTXAS]}"
ptxas="${2:-${CUDA_PATH:-$(dirname "$0")/../.cache/cuda-nvrtc}/bin/ptxas}"
if [ ! -x "$ptxas" ]; then
    echo "kernel-resources: no ptxas at $ptxas (scripts/fetch-nvrtc.sh fetches one)" >&2
    exit 1
fi
shopt -s nullglob
kernels=("$dir"/*.ptx)
if [ ${#kernels[@]} -eq 0 ]; then
    echo "kernel-resources: no .ptx files in $dir" >&2
    exit 1
fi
spilled=0
printf '%-60s %9s %12s %12s\n' kernel registers "spill stores" "spill loads"
for ptx in "${kernels[@]}"; do
    info="$("$ptxas" -arch=sm_90a -v -o /dev/null "$ptx" 2>&1)" || {
        echo "kernel-resources: ptxas rejected $ptx:" >&2
        echo "$info" >&2
        exit 1
    }
    registers=$(grep -o 'Used [0-9]* registers' <<<"$info" | awk '{print $2}')
    stores=$(grep -o '[0-9]* bytes spill stores' <<<"$info" | awk '{print $1}')
    loads=$(grep -o '[0-9]* bytes spill loads' <<<"$info" | awk '{print $1}')
    printf '%-60s %9s %12s %12s\n' "$(basename "$ptx" .ptx)" "$registers" "$stores" "$loads"
    if [ "$stores" != 0 ] || [ "$loads" != 0 ]; then
        spilled=$((spilled + 1))
    fi
done
if [ "$spilled" -gt 0 ]; then
    echo "kernel-resources: $spilled kernel(s) spill registers" >&2
    exit 1
fi
