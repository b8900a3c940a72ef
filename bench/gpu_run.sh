#!/usr/bin/env bash
# The one prepared GPU script: correctness of the compiled kernels, then the benchmarks.
# Run on the GPU machine from the repo root: `bash bench/gpu_run.sh` (writes logs to $OUT,
# or ./out when OUT is unset). Every step has its own time limit; the whole run is sized to
# finish in about 9 minutes on an H200, plus up to 5 for the model benchmark.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv
  python3 -c "import jax, jaxlib, triton; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'triton', triton.__version__, jax.devices())"
  git rev-parse --short HEAD 2>/dev/null || true
} 2>&1 | tee "$OUT/env.txt"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) ==="
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  echo "=== $name: rc=$rc in $(( $(date +%s) - t0 )) s ==="
}

step elementwise 120 python3 bench/elementwise.py --out "$OUT"
step gpu_tests 180 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py \
  tests/test_gpu_neurons.py
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
if ! python3 -c "import optax" 2>/dev/null && [ -d .whl ]; then
  python3 -m pip install -q --no-index --find-links .whl optax 2>&1 | tail -n 3
fi
if python3 -c "import optax" 2>/dev/null; then
  step models 300 python3 -m spikefuse bench --models --json "$OUT/models.json" \
    --plot "$OUT/models-memory.png" --no-progress
else
  echo "=== models: skipped (optax is not importable; carry a wheelhouse in ./.whl) ==="
fi
