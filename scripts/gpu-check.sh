#!/usr/bin/env bash
# The GPU check of issue 6, for a bare GPU machine (no Rust, no network; PyTorch and
# transformers in its Python), run from the repository root of a copy of the working tree with
# the release binary built elsewhere:
#
#   (a) CPU-vs-CUDA parity on small random models (logits within bf16 tolerance, greedy tokens
#       equal);
#   (b) Mistral-7B-shape random weights on the GPU: decode tok/s at batch 1, 8, 32, prefill
#       tok/s, peak GPU memory;
#   (b2) each small-row matmul kernel of models/src/cuda_matmul.rs on the same model, for the
#       decode steps (SWEEP_KERNELS, SWEEP_BATCHES, SWEEP_GEN_TOKENS);
#   (c) the same shapes through transformers' generate (scripts/hf-bench.py);
#
# preceded by a smoke test (tiny-llama, one prompt, 4 tokens), then one table with the goals.
# Each step is time-boxed and a failed step does not stop the next; the whole run stays under
# 7.5 minutes. Outputs also go to $OUT when it is set.
#
# Diagnosis: the tool prints timestamped progress lines (device init, first kernel, prefill,
# each early decode step) and, while a stage lasts DRPO_WATCHDOG_S (5) seconds, a watchdog
# line with its busiest threads and their kernel wait channels. A cubecl.toml written to the
# run directory logs every kernel compilation to stderr and caches PTX on disk across the steps.
# The `cuda` build has no autotuning and no fusion (see models/Cargo.toml): a cold start
# compiles a few dozen kernels instead of hundreds.
#
# Environment: DRPO_MODEL_TOOL (binary; default target-models/gpu/drpo-model-tool, the stripped
# copy that is carried, else target-models/release/drpo-model-tool),
# DEVICE (default cuda:0; `cpu` runs the same steps on the CPU for a dry run, with
# CONFIG=tiny-mistral), CONFIG (default mistral-7b), BATCHES (1,8,32), PROMPT_LEN (128),
# GEN_TOKENS (64), SKIP_HF=1 to skip step (c), HF_BATCHES (1,32), HF_GEN_TOKENS (64),
# CUBECL_LOG (1: compilation logs on stderr; 0: off).
set -u
cd "$(dirname "$0")/.."

OUT_DIR=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu-check.log") 2>&1

BIN=${DRPO_MODEL_TOOL:-target-models/gpu/drpo-model-tool}
[ -x "$BIN" ] || BIN=target-models/release/drpo-model-tool
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
DEVICE=${DEVICE:-cuda:0}
CONFIG=${CONFIG:-mistral-7b}
SWEEP_CONFIG=${SWEEP_CONFIG:-$CONFIG}
BATCHES=${BATCHES:-1,8,32}
PROMPT_LEN=${PROMPT_LEN:-128}
GEN_TOKENS=${GEN_TOKENS:-64}
HF_BATCHES=${HF_BATCHES:-1,32}
HF_GEN_TOKENS=${HF_GEN_TOKENS:-64}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
export DRPO_WATCHDOG_S=${DRPO_WATCHDOG_S:-5}
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

# cubecl reads cubecl.toml from its working directory (or a parent): the tool runs in RUN_DIR,
# where one logs compilations (names only) to stderr and keeps a PTX cache
# that the later steps reuse.
RUN_DIR=$SHIM/run
mkdir -p "$RUN_DIR"
{
  # PTX of compiled kernels, kept in the user's config directory for the later steps.
  printf '[compilation]\ncache = "global"\n\n'
  if [ "${CUBECL_LOG:-1}" = 1 ]; then
    printf '[compilation.logger]\nlevel = "basic"\nstderr = true\n\n'
  fi
} >"$RUN_DIR/cubecl.toml"
echo "cubecl.toml in $RUN_DIR:"
cat "$RUN_DIR/cubecl.toml"
# On a timeout, show what each thread of the stuck process was doing.
run_tool() { # run_tool SECONDS OUTFILE ARGS...
  local limit=$1 outfile=$2
  shift 2
  (cd "$RUN_DIR" && exec "$BIN" "$@") >>"$outfile" &
  local pid=$! waited=0 rc
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$limit" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "--- TIMEOUT after ${limit}s: threads of $pid (name state wchan):"
    for t in /proc/"$pid"/task/*; do
      printf '  %s %s %s\n' "$(cat "$t/comm" 2>/dev/null)" \
        "$(awk '{print $3}' "$t/stat" 2>/dev/null)" "$(cat "$t/wchan" 2>/dev/null)"
    done
    if [ -z "${GDB_DONE:-}" ] && command -v gdb >/dev/null; then
      GDB_DONE=1
      timeout 10 gdb -p "$pid" -batch -ex "thread apply all bt 12" 2>/dev/null \
        | grep -E '^(Thread|#)' | head -120
    fi
    kill -TERM "$pid" 2>/dev/null
    sleep 2
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 124
  fi
  wait "$pid"
  rc=$?
  return "$rc"
}

section "smoke: tiny-llama, 1 prompt, 4 tokens on $DEVICE"
run_tool "${SMOKE_TIMEOUT:-45}" "$OUT_DIR/smoke.jsonl" bench --config tiny-llama \
  --device "$DEVICE" --batch 1 --prompt-len 8 --gen-tokens 4 \
  || echo "smoke: FAILED (exit $?)"

section "(a) parity: cpu f32 vs $DEVICE"
: >"$OUT_DIR/parity.jsonl"
for model in tiny-mistral tiny-llama; do
  run_tool "${PARITY_TIMEOUT:-45}" "$OUT_DIR/parity.jsonl" parity --config "$model" \
    --device "$DEVICE" || echo "parity on $model: FAILED (exit $?)"
done

section "(b) ours: $CONFIG random weights on $DEVICE"
start_sampling "$OUT_DIR/mem-ours.txt"
run_tool "${BENCH_TIMEOUT:-220}" "$OUT_DIR/ours.jsonl" bench --config "$CONFIG" \
  --device "$DEVICE" --batch "$BATCHES" --prompt-len "$PROMPT_LEN" --gen-tokens "$GEN_TOKENS" \
  || echo "bench: FAILED (exit $?)"
stop_sampling

section "(b2) decode: the small-row matmul kernels side by side ($SWEEP_CONFIG)"
# Each kernel of models/src/cuda_matmul.rs on the same shapes (short prompt and generation).
for kernel in ${SWEEP_KERNELS:-cmma gemv-plane vecmat}; do
  DRPO_CUDA_SMALL_MATMUL=$kernel run_tool "${SWEEP_TIMEOUT:-60}" "$OUT_DIR/sweep-$kernel.jsonl" \
    bench --config "$SWEEP_CONFIG" --device "$DEVICE" --batch "${SWEEP_BATCHES:-1,32}" \
    --prompt-len 32 --gen-tokens "${SWEEP_GEN_TOKENS:-24}" || echo "sweep $kernel: FAILED (exit $?)"
done

section "(c) transformers: the same shapes"
if [ "${SKIP_HF:-0}" = 1 ] || [ "${DEVICE%%:*}" != cuda ]; then
  echo "skipped"
  : >"$OUT_DIR/hf.jsonl"
else
  start_sampling "$OUT_DIR/mem-hf.txt"
  echo "reference from the last run (H100, gen 128): decode 16.7 / 122.8 / 503.3 tok/s at" \
    "batch 1/8/32; prefill 4.5k/29.0k/32.7k tok/s; 16.2 GB peak"
  timeout -k 5 "${HF_TIMEOUT:-60}" "$PY" scripts/hf-bench.py --batch "$HF_BATCHES" \
    --prompt-len "$PROMPT_LEN" --gen-tokens "$HF_GEN_TOKENS" >"$OUT_DIR/hf.jsonl" \
    || echo "transformers: FAILED (exit $?)"
  stop_sampling
fi

section "summary"
"$PY" scripts/gpu-report.py "$OUT_DIR" || echo "report failed"
echo "outputs in $OUT_DIR; total $(( $(date +%s) - START )) s"
