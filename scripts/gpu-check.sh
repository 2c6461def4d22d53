#!/usr/bin/env bash
# The GPU check, for a bare GPU machine (no Rust, no network; PyTorch and
# transformers in its Python), run from the repository root of a copy of the working tree with
# the release binary built elsewhere:
#
#   (a) each weight projection of the model alone, per small-row matmul kernel (MATMUL_KERNELS,
#       MATMUL_ROWS): microseconds, weight GB/s, and the largest difference from the product
#       computed on the host in f64. When `mma` fails or differs, the later steps use `rows`,
#       and when `rows` does too, `cmma`;
#   (a2) CPU-vs-CUDA parity on small random models (logits within bf16 tolerance, greedy tokens
#       equal but where the CPU's own choice was a near-tie), with the default kernels, and when
#       that fails, with one group of our kernels switched off at a time; then under each switch
#       word of PARITY_OPT_IN (none by default), for checking a kernel that is not yet a default;
#   (a3) the generation path of drpo-host's `local:` models (LocalModel: batched rows, greedy
#       choices taken on the device, schema-constrained decoding) on a small random model with a
#       tokenizer, answer by answer against the CPU; every answer under the schema must parse,
#       and the greedy answers must come out the same when the requests join a running batch
#       (`serve`'s continuous batching: the device's cache moved and merged);
#   (b) Mistral-7B-shape random weights on the GPU: decode tok/s at batch 1, 8, 32, prefill
#       tok/s, peak GPU memory;
#   (b2) the same model with the defaults, then with one switch changed (the words of SWEEP: by
#       default each step's tokens read before the next step is issued, RoPE in its own launch,
#       burn's argmax, SwiGLU in its own launch, `rows` for `mma`, burn's attention), for the
#       decode steps (SWEEP_BATCHES, SWEEP_PROMPT_LEN, SWEEP_GEN_TOKENS), each against the
#       defaults' run under the same settings;
#   (b3) cubecl's per-kernel times of a few batch-1 decode steps (its profiling logger), to rank
#       the kernels of a step;
#   (c) the same shapes through transformers' generate (scripts/hf-bench.py);
#
# preceded by a smoke test (tiny-llama, one prompt, 4 tokens), then one table with the goals.
# Each step is time-boxed and runs in a subshell of its own under `set -euo pipefail`: a command
# that fails inside a step fails that step (with the line it failed at), and a failed step does
# not stop the next. The summary lists each step as ok, FAILED or skipped, and the script exits
# non-zero when any step failed. Give the device command a margin over the run times in
# docs/gpu.md ("Checking a GPU machine"). Outputs also go to $OUT when it is set.
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
# CUBECL_LOG (1: compilation logs on stderr; full: with each kernel's source; 0: off),
# STEPS (the steps to run, of "smoke matmul parity product bench sweep profile hf"; default all).
#
# The binary: CARGO_TARGET_DIR=target-models cargo build --release -p drpo-models
# --features cuda,structured --bin drpo-model-tool, stripped into target-models/gpu/ (carried).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu-check.log") 2>&1

BIN=${DRPO_MODEL_TOOL:-target-models/gpu/drpo-model-tool}
[ -x "$BIN" ] || BIN=target-models/release/drpo-model-tool
# An absolute path, as the steps run the tool from another directory (a missing directory is
# kept as given: the probe and each step then say the binary is missing).
BIN=$(cd "$(dirname "$BIN")" 2>/dev/null && pwd || dirname "$PWD/$BIN")/$(basename "$BIN")
DEVICE=${DEVICE:-cuda:0}
CONFIG=${CONFIG:-mistral-7b}
SWEEP_CONFIG=${SWEEP_CONFIG:-$CONFIG}
BATCHES=${BATCHES:-1,8,32}
PROMPT_LEN=${PROMPT_LEN:-128}
GEN_TOKENS=${GEN_TOKENS:-64}
HF_BATCHES=${HF_BATCHES:-1,32}
HF_GEN_TOKENS=${HF_GEN_TOKENS:-64}
# The rows at which the matmul step measures the `rows` kernel's variants (MATMUL_VARIANTS).
VARIANT_ROWS=1,4
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
stop_sampling() {
  if [ -n "$SAMPLER" ]; then
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
  fi
  SAMPLER=
}

# Whether step $1 is among STEPS.
wants() { [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]]; }

# Each step's outcome, for the summary: "NAME ok", "NAME FAILED (...)" or "NAME skipped".
STATUS=()
# Settings a step passes on to the later steps (which kernels they use), as `export` lines that
# the main shell reads after each step: the steps run in subshells.
STATE=$OUT_DIR/.passed-on.sh
: >"$STATE"
# Marks the current step failed at its end while letting it go on (a tool run that failed is
# reported, and the step's other runs still give their lines).
failed() { echo "$*: FAILED"; STEP_FAILED=1; }
# Sets NAME=VALUE here and for the later steps.
pass_on() { export "$1"; printf 'export %q\n' "$1" >>"$STATE"; }
# Runs the function STEP (the step NAME) in a subshell with errexit, nounset and pipefail; a
# command that fails there ends the step, with its line and exit code on stderr. Never fails
# itself, so that the next step runs.
step() { # step NAME FUNCTION
  local name=$1 fn=$2 rc
  if ! wants "$name"; then
    STATUS+=("$name skipped (not in STEPS)")
    return 0
  fi
  # Not in an `if` or `||`: there bash would turn errexit off inside the subshell.
  set +e
  (
    set -Eeuo pipefail
    trap 'echo "step $name: \`$BASH_COMMAND\` failed (exit $?) at line $LINENO" >&2' ERR
    STEP_FAILED=0
    "$fn"
    exit "$STEP_FAILED"
  )
  rc=$?
  set -e
  stop_sampling
  # shellcheck disable=SC1090
  . "$STATE"
  if [ "$rc" = 0 ]; then
    STATUS+=("$name ok")
  else
    STATUS+=("$name FAILED (exit $rc)")
  fi
}

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
. "$OUT_DIR/cuda-env.sh" || echo "could not read $OUT_DIR/cuda-env.sh"
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
  case "${CUBECL_LOG:-1}" in
    1) printf '[compilation.logger]\nlevel = "basic"\nstderr = true\n\n' ;;
    full) printf '[compilation.logger]\nlevel = "full"\nstderr = true\n\n' ;;
  esac
} >"$RUN_DIR/cubecl.toml"
echo "cubecl.toml in $RUN_DIR:"
cat "$RUN_DIR/cubecl.toml"
# On a timeout, show what each thread of the stuck process was doing.
run_tool() { # [RUN_ENV=...] run_tool SECONDS OUTFILE ARGS...
  local limit=$1 outfile=$2
  shift 2
  # RUN_ENV: NAME=VALUE words for this run only (kernel switches).
  # shellcheck disable=SC2086
  # RUN_IN: the directory to run in (its cubecl.toml), RUN_DIR unless given.
  (cd "${RUN_IN:-$RUN_DIR}" && exec env ${RUN_ENV:-} "$BIN" "$@") >>"$outfile" &
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
      { timeout 10 gdb -p "$pid" -batch -ex "thread apply all bt 12" 2>/dev/null || true; } \
        | grep -E '^(Thread|#)' | head -120 || true
    fi
    kill -TERM "$pid" 2>/dev/null || true
    sleep 2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 124
  fi
  rc=0
  wait "$pid" || rc=$?
  return "$rc"
}

# Whether FILE (the matmul step's JSON lines) holds all 5 projections at each of the row counts
# ROWS (comma-separated) for KERNEL, each within 2% of the host's f64 product; says how many.
products_agree() { # products_agree FILE ROWS KERNEL
  "$PY" - "$@" <<'PYEOF'
import json, sys
path, counts, kernel = sys.argv[1:]
try:
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]
except OSError:
    rows = []
ours = [r for r in rows if r["kernel"] == kernel]
want = 5 * len(counts.split(","))
bad = [r for r in ours if not r["max_rel_diff"] <= 0.02]
print(f"{path.rsplit('/', 1)[-1]}: `{kernel}` kernel: {len(ours)} of {want} products, "
      f"{len(bad)} off by more than 2%")
sys.exit(0 if len(ours) == want and not bad else 1)
PYEOF
}

smoke() {
section "smoke: tiny-llama, 1 prompt, 4 tokens on $DEVICE"
run_tool "${SMOKE_TIMEOUT:-45}" "$OUT_DIR/smoke.jsonl" bench --config tiny-llama \
  --device "$DEVICE" --batch 1 --prompt-len 8 --gen-tokens 4 \
  || failed "smoke (exit $?)"
}

matmul() {
section "(a) projections alone: $CONFIG shapes on $DEVICE"
: >"$OUT_DIR/matmul.jsonl"
# One process per kernel, so that one that fails to compile or launch costs only its own line.
for kernel in ${MATMUL_KERNELS:-mma rows cmma}; do
  run_tool "${MATMUL_TIMEOUT:-40}" "$OUT_DIR/matmul.jsonl" matmul --config "$CONFIG" \
    --device "$DEVICE" --rows "${MATMUL_ROWS:-1,4,8,12,16,32}" --kernels "$kernel" \
    --iters "${MATMUL_ITERS:-20}" || failed "matmul $kernel (exit $?)"
done
# The `rows` kernel at the row counts it takes by default, with other shape settings.
for variant in ${MATMUL_VARIANTS:-DRPO_CUDA_ROWS_PLANES=8 DRPO_CUDA_ROWS_PLANES=2}; do
  RUN_ENV=$variant run_tool "${MATMUL_TIMEOUT:-40}" "$OUT_DIR/matmul-${variant//=/-}.jsonl" matmul \
    --config "$CONFIG" --device "$DEVICE" --rows "$VARIANT_ROWS" --kernels rows \
    --iters "${MATMUL_ITERS:-20}" \
    || failed "matmul rows with $variant (exit $?)"
done
# The small test models' shapes (inner sizes below 32 vectors, odd row counts).
for model in ${MATMUL_SMALL_CONFIGS:-tiny-mistral tiny-llama}; do
  for kernel in mma rows; do
    run_tool "${MATMUL_TIMEOUT:-40}" "$OUT_DIR/matmul-small.jsonl" matmul --config "$model" \
      --device "$DEVICE" --rows 1,4,8,76 --kernels "$kernel" --iters 2 \
      || failed "matmul $kernel on $model (exit $?)"
  done
done
# Each small-row kernel of ours must have given every shape, within bf16 rounding of the
# host's product; the later steps leave out one that did not (`mma` falls back to `rows`, and
# `rows` to `cmma`).
if [ -z "${DRPO_CUDA_SMALL_MATMUL:-}" ]; then
  for kernel in mma rows; do
    # A kernel left out of MATMUL_KERNELS was not checked: keep the default choice.
    [[ " ${MATMUL_KERNELS:-mma rows cmma} " == *" $kernel "* ]] || break
    if ! products_agree "$OUT_DIR/matmul.jsonl" "${MATMUL_ROWS:-1,4,8,12,16,32}" "$kernel"; then
      next=$([ "$kernel" = mma ] && echo rows || echo cmma)
      echo "the \`$kernel\` kernel failed or differs: the later steps use DRPO_CUDA_SMALL_MATMUL=$next"
      pass_on "DRPO_CUDA_SMALL_MATMUL=$next"
      # A kernel that gives wrong products fails the step (the later steps still run).
      STEP_FAILED=1
      [ "$kernel" = mma ] || break
    else
      break
    fi
  done
fi
}

parity() {
section "(a2) parity: cpu f32 vs $DEVICE"
: >"$OUT_DIR/parity.jsonl"
# Parity on both test models with the kernel switch words $1 (none: the defaults), labelled $2;
# succeeds when both passed.
parity_on_both() {
  local kernels=$1 label=$2 ok=0 model
  for model in tiny-mistral tiny-llama; do
    echo "--- parity on $model $label"
    if RUN_ENV=$kernels run_tool "${PARITY_TIMEOUT:-45}" "$OUT_DIR/parity.jsonl" parity \
      --config "$model" --device "$DEVICE"; then
      ok=$((ok + 1))
    else
      echo "parity on $model ${kernels:-(default kernels)}: FAILED (exit $?)"
    fi
  done
  [ "$ok" = 2 ]
}
# With every kernel of ours; when that fails (or PARITY_ALL is set), again with one group of them
# replaced, so that a failure shows which group it comes from.
passed=
for kernels in "" "DRPO_CUDA_QUEUED_READS=0" "DRPO_CUDA_ARGMAX=0" "DRPO_CUDA_ROPE_ATTENTION=0" \
  "DRPO_CUDA_GATED=0" "DRPO_CUDA_ATTENTION=0" "DRPO_CUDA_SMALL_MATMUL=rows" "DRPO_CUDA_FUSED=0"; do
  [ -n "$passed" ] && [ -z "${PARITY_ALL:-}" ] && break
  # The matmul step's fallback stands: a variant must not bring back a kernel that failed there.
  [[ "$kernels" == DRPO_CUDA_SMALL_MATMUL=* ]] && [ -n "${DRPO_CUDA_SMALL_MATMUL:-}" ] && continue
  if parity_on_both "$kernels" "${kernels:-(default kernels)}" && [ -z "$passed" ]; then
    passed=${kernels:-default}
  fi
done
# When the default kernels failed, the later steps use the first switch that passed.
if [ -z "$passed" ]; then
  failed "parity: no kernel switch passed, the later steps' figures come from unchecked kernels"
elif [ "$passed" != default ]; then
  failed "parity with the default kernels: the later steps use $passed"
  pass_on "$passed"
fi
# Kernels that are not yet a default, checked here; the later steps measure the defaults (the
# sweep measures a switch's speed). Run 15 adopted every opt-in that passed parity, and its
# table measured a combination slower than the defaults.
for optin in ${PARITY_OPT_IN:-}; do
  parity_on_both "$optin" "$optin (opt-in)" || failed "parity of the opt-in $optin"
done
}

product() {
section "(a3) drpo-host's generation path (LocalModel) on $DEVICE against the CPU"
PRODUCT_MODEL=$SHIM/tiny-mistral-tokenizer
: >"$OUT_DIR/product.jsonl"
if run_tool 30 "$OUT_DIR/product.jsonl" random-model --config tiny-mistral --out "$PRODUCT_MODEL" \
  --tokenizer; then
  run_tool "${PRODUCT_TIMEOUT:-60}" "$OUT_DIR/product.jsonl" generate --model "$PRODUCT_MODEL" \
    --device "$DEVICE" --against cpu --max-tokens 24 \
    --schema '{"type":"object","properties":{"score":{"type":"integer"},"why":{"type":"string","maxLength":16}},"required":["score","why"]}' \
    "hello world" "hello" "world hello hello" "hello hello" || failed "product (exit $?)"
else
  failed "product: writing the model (exit $?)"
fi
}

bench() {
section "(b) ours: $CONFIG random weights on $DEVICE"
start_sampling "$OUT_DIR/mem-ours.txt"
run_tool "${BENCH_TIMEOUT:-220}" "$OUT_DIR/ours.jsonl" bench --config "$CONFIG" \
  --device "$DEVICE" --batch "$BATCHES" --prompt-len "$PROMPT_LEN" --gen-tokens "$GEN_TOKENS" \
  || failed "bench (exit $?)"
stop_sampling
}

sweep() {
section "(b2) decode with other kernel switches ($SWEEP_CONFIG)"
# The defaults first, then each SWEEP word as one run's kernel switch, all with the same
# settings (the bench's prompt, a shorter generation), so that each compares with the first.
for kernels in defaults ${SWEEP:-DRPO_CUDA_QUEUED_READS=0 DRPO_CUDA_ROPE_ATTENTION=0 DRPO_CUDA_ARGMAX=0 DRPO_CUDA_GATED=0 DRPO_CUDA_SMALL_MATMUL=rows DRPO_CUDA_ATTENTION=0}; do
  RUN_ENV=${kernels#defaults} run_tool "${SWEEP_TIMEOUT:-60}" "$OUT_DIR/sweep-${kernels//=/-}.jsonl" \
    bench --config "$SWEEP_CONFIG" --device "$DEVICE" --batch "${SWEEP_BATCHES:-1,32}" \
    --prompt-len "${SWEEP_PROMPT_LEN:-$PROMPT_LEN}" --gen-tokens "${SWEEP_GEN_TOKENS:-24}" \
    || failed "sweep $kernels (exit $?)"
done
}

profile() {
section "(b3) kernel times of batch-1 decode steps ($CONFIG, cubecl's profiler)"
# With its profiling logger on, cubecl syncs around every kernel and prints, at each sync of
# the tool, every kernel's count and total time. Each time includes a sync (tens of µs), so the
# figures rank kernels against each other; they are not the bench's step time.
PROFILE_DIR=$SHIM/profile
mkdir -p "$PROFILE_DIR"
{
  cat "$RUN_DIR/cubecl.toml"
  printf '[profiling.logger]\nlevel = "basic"\nstderr = true\n'
} >"$PROFILE_DIR/cubecl.toml"
RUN_IN=$PROFILE_DIR run_tool "${PROFILE_TIMEOUT:-60}" "$OUT_DIR/profile.jsonl" bench \
  --config "$CONFIG" --device "$DEVICE" --batch 1 --prompt-len "$PROMPT_LEN" \
  --gen-tokens "${PROFILE_GEN_TOKENS:-16}" || failed "profile (exit $?)"
}

hf() {
section "(c) transformers: the same shapes"
if [ "${SKIP_HF:-0}" = 1 ] || [ "${DEVICE%%:*}" != cuda ]; then
  echo "skipped (SKIP_HF=1, or not a CUDA device)"
  : >"$OUT_DIR/hf.jsonl"
else
  start_sampling "$OUT_DIR/mem-hf.txt"
  echo "reference from run 13 (H100, gen 64): decode 16.2 / 463.6 tok/s at batch 1/32;" \
    "prefill 4.3k/34.2k tok/s; 16.1 GB peak"
  timeout -k 5 "${HF_TIMEOUT:-60}" "$PY" scripts/hf-bench.py --batch "$HF_BATCHES" \
    --prompt-len "$PROMPT_LEN" --gen-tokens "$HF_GEN_TOKENS" >"$OUT_DIR/hf.jsonl" \
    || failed "transformers (exit $?)"
  stop_sampling
fi
}

for name in smoke matmul parity product bench sweep profile hf; do
  step "$name" "$name"
done

section "summary"
report_ok=1
"$PY" scripts/gpu-report.py "$OUT_DIR" || { echo "report: FAILED (exit $?)"; report_ok=0; }
echo
echo "steps:"
failures=0
for line in "${STATUS[@]}"; do
  printf '  %s\n' "$line"
  if [[ "$line" == *" FAILED "* ]]; then failures=$((failures + 1)); fi
done
[ "$report_ok" = 1 ] || failures=$((failures + 1))
echo "outputs in $OUT_DIR; total $(( $(date +%s) - START )) s; $failures failed"
[ "$failures" = 0 ]
