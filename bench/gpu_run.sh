#!/usr/bin/env bash
# The one prepared GPU script: correctness of the compiled kernels, then the benchmarks.
# Run on the GPU machine from the repo root: `bash bench/gpu_run.sh` (writes logs to $OUT,
# or ./out when OUT is unset), or `bash bench/gpu_run.sh STEP...` for some steps only
# (gpu_tests gpu_x64 families elementwise neurons engine models).
#
# Time: the whole run stays within BUDGET seconds (default 570, under the 10 minutes one
# command may take on a lent GPU). Steps run in the order below, each with its own limit,
# cut to what is left of the budget; a step with under 20 s left is skipped and says so
# (run it next time by name). The first two are the newest and matter most: the compiled
# Triton and Mosaic GPU kernels against the reference (the Mosaic GPU family has never run
# on a GPU), and Triton vs Mosaic GPU side by side against the copy ceiling
# (bench/families.py: what GPU_FAMILY in spikefuse/kernels/dispatch.py is decided by).
set -u
OUT=${OUT:-out}
BUDGET=${BUDGET:-570}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
T_START=$(date +%s)
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
  python3 -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -n 1
  python3 -c "from spikefuse.kernels import _compat, dispatch; print('Pallas Triton:', _compat.has_triton(), '| pallas compiles:', {op: dispatch.gpu_family(op) for op in dispatch.OPS}, '| Mosaic GPU arch:', _compat.mosaic_gpu_arch())"
  git rev-parse --short HEAD 2>/dev/null || true
} 2>&1 | tee "$OUT/env.txt"

WANTED=" ${*:-gpu_tests gpu_x64 families elementwise neurons engine models} "
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  case "$WANTED" in *" $name "*) ;; *) return 0 ;; esac
  local left=$(( BUDGET - ($(date +%s) - T_START) ))
  if [ "$left" -lt 20 ]; then
    echo "=== $name: skipped, ${left}s left of the ${BUDGET}s budget (run: bash bench/gpu_run.sh $name) ==="
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s) ==="
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  echo "=== $name: rc=$rc in $(( $(date +%s) - t0 )) s ==="
}

# Both GPU kernel families, compiled, against the reference: "pallas" (Triton) and
# "pallas_mgpu" (Mosaic GPU), every surrogate and every neuron (tests skip without a GPU).
step gpu_tests 180 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py \
  tests/test_gpu_neurons.py
# Both families compiled with jax_enable_x64 on (issue 18): f32 and f64, spikes exact.
step gpu_x64 90 python3 -m pytest -q -p no:cacheprovider tests/test_x64.py \
  -k "pallas_triton or pallas_mgpu"
# Triton vs Mosaic GPU: elementwise at 2^28 f32, every built-in neuron and AdEx at T=32 x 4M
# f32, forward+backward, with the copy ceiling.
step families 150 python3 bench/families.py --out "$OUT"
step elementwise 120 python3 bench/elementwise.py --out "$OUT"
if [ -f bench/neurons.py ]; then
  step neurons 210 python3 bench/neurons.py --out "$OUT"
fi
# The neuron engine (issue 10): every built-in and the AdEx example step against lax.scan
# at unroll 1/8/32, f32, at the two sizes.
step engine 240 python3 -m spikefuse bench --suite neurons --neurons if,lif,plif,alif,adex \
  --cases 32x4194304,1024x4096 --dtypes float32 --json "$OUT/engine.json" --no-progress
# Whole training steps (bench --models) need optax; the GPU machine cannot reach a package
# registry, so install it from a wheelhouse carried in ./.whl when it is missing
# (pip download optax -d .whl on a machine with access).
case "$WANTED" in *" models "*)
  if ! python3 -c "import optax" 2>/dev/null && [ -d .whl ]; then
    python3 -m pip install -q --no-index --find-links .whl optax 2>&1 | tail -n 3
  fi
  if python3 -c "import optax" 2>/dev/null; then
    step models 300 python3 -m spikefuse bench --models --json "$OUT/models.json" \
      --plot "$OUT/models-memory.png" --no-progress
  else
    echo "=== models: skipped (optax is not importable; carry a wheelhouse in ./.whl) ==="
  fi
  ;;
esac
echo "=== total: $(( $(date +%s) - T_START )) s of the ${BUDGET}s budget ==="
