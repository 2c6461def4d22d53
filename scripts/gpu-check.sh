#!/usr/bin/env bash
# The GPU check of issue 6, for a bare GPU machine (no Rust, no network; PyTorch and
# transformers in its Python), run from the repository root of a copy of the working tree with
# the release binary built elsewhere:
#
#   (a) CPU-vs-CUDA parity on small random models (logits within bf16 tolerance, greedy tokens
#       equal);
#   (b) Mistral-7B-shape random weights on the GPU: decode tok/s at batch 1, 8, 32, prefill
#       tok/s, peak GPU memory;
#   (c) the same shapes through transformers' generate (scripts/hf-bench.py);
#
# then one table with the goals. Each step is time-boxed and a failed step does not stop the
# next; the whole run stays well under 8 minutes. Outputs also go to $OUT when it is set.
#
# Environment: DRPO_MODEL_TOOL (binary; default target-models/gpu/drpo-model-tool, the stripped
# copy that is carried, else target-models/release/drpo-model-tool),
# DEVICE (default cuda:0; `cpu` runs the same steps on the CPU for a dry run, with
# CONFIG=tiny-mistral), CONFIG (default mistral-7b), BATCHES (1,8,32), PROMPT_LEN (128),
# GEN_TOKENS (128), SKIP_HF=1 to skip step (c). CUBECL_DEBUG_LOG=stderr shows cubecl's kernel
# compilations (slow; for diagnosis only).
set -u
cd "$(dirname "$0")/.."

OUT_DIR=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu-check.log") 2>&1

BIN=${DRPO_MODEL_TOOL:-target-models/gpu/drpo-model-tool}
[ -x "$BIN" ] || BIN=target-models/release/drpo-model-tool
DEVICE=${DEVICE:-cuda:0}
CONFIG=${CONFIG:-mistral-7b}
BATCHES=${BATCHES:-1,8,32}
PROMPT_LEN=${PROMPT_LEN:-128}
GEN_TOKENS=${GEN_TOKENS:-128}
PY=${PY:-$(command -v python3 || command -v python || echo python3)}
START=$(date +%s)

section() { echo; echo "=== $* (t+$(( $(date +%s) - START ))s)"; }

# Samples the GPU's used memory every 200 ms into $1 until stop_sampling.
SAMPLER=
start_sampling() {
  if command -v nvidia-smi >/dev/null && [ "${DEVICE%%:*}" = cuda ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$1" 2>/dev/null &
    SAMPLER=$!
  else
    : >"$1"
  fi
}
stop_sampling() { [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; SAMPLER=; }

section probe
uname -a
nvidia-smi || echo "nvidia-smi failed"
"$PY" - <<'PYEOF' || echo "python probe failed"
import sys
print("python", sys.version.split()[0])
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        print("gpu", torch.cuda.get_device_name(0))
except Exception as e:
    print("torch: not importable:", e)
try:
    import transformers
    print("transformers", transformers.__version__)
except Exception as e:
    print("transformers: not importable:", e)
PYEOF
ls -l "$BIN" && "$BIN" --version || echo "binary $BIN is missing or does not run"

section "CUDA runtime for burn (NVRTC library and headers)"
# cubecl compiles its kernels at run time with NVRTC: it needs libnvrtc (cudarc loads it by
# name through LD_LIBRARY_PATH) and the CUDA headers under $CUDA_PATH/include. A system CUDA
# toolkit is preferred when one is installed; else scripts/cuda-env.py assembles both from
# PyTorch's wheels.
SHIM=$(mktemp -d "${TMPDIR:-/tmp}/drpo-cuda.XXXXXX")
if [ -z "${CUDA_PATH:-}" ] && [ -f /usr/local/cuda/include/cuda_bf16.h ]; then
  export CUDA_PATH=/usr/local/cuda
  export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
fi
"$PY" scripts/cuda-env.py "$SHIM" >"$OUT_DIR/cuda-env.sh" || echo "could not look for the pip CUDA libraries"
cat "$OUT_DIR/cuda-env.sh"
# shellcheck disable=SC1091
. "$OUT_DIR/cuda-env.sh"
echo "CUDA_PATH=${CUDA_PATH:-unset}"
for h in cuda_bf16.h cuda_fp16.h cuda_runtime.h mma.h crt/mma.h cooperative_groups.h cuda/barrier cccl/cuda/barrier cuda/pipeline; do
  [ -e "${CUDA_PATH:-/nonexistent}/include/$h" ] && echo "found include/$h" || echo "MISSING include/$h"
done

section "(a) parity: cpu f32 vs $DEVICE"
: >"$OUT_DIR/parity.jsonl"
for model in tiny-mistral tiny-llama; do
  timeout -k 5 50 "$BIN" parity --config "$model" --device "$DEVICE" >>"$OUT_DIR/parity.jsonl" \
    || echo "parity on $model: FAILED (exit $?)"
done

section "(b) ours: $CONFIG random weights on $DEVICE"
start_sampling "$OUT_DIR/mem-ours.txt"
timeout -k 5 180 "$BIN" bench --config "$CONFIG" --device "$DEVICE" --batch "$BATCHES" \
  --prompt-len "$PROMPT_LEN" --gen-tokens "$GEN_TOKENS" >"$OUT_DIR/ours.jsonl" \
  || echo "bench: FAILED (exit $?)"
stop_sampling

section "(c) transformers: the same shapes"
if [ "${SKIP_HF:-0}" = 1 ] || [ "${DEVICE%%:*}" != cuda ]; then
  echo "skipped"
  : >"$OUT_DIR/hf.jsonl"
else
  start_sampling "$OUT_DIR/mem-hf.txt"
  timeout -k 5 120 "$PY" scripts/hf-bench.py --batch "$BATCHES" --prompt-len "$PROMPT_LEN" \
    --gen-tokens "$GEN_TOKENS" >"$OUT_DIR/hf.jsonl" || echo "transformers: FAILED (exit $?)"
  stop_sampling
fi

section "summary"
"$PY" scripts/gpu-report.py "$OUT_DIR" || echo "report failed"
echo "outputs in $OUT_DIR; total $(( $(date +%s) - START )) s"
