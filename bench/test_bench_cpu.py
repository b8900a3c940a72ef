"""CPU regression benchmarks (pytest-benchmark): ``pytest bench --benchmark-only``.

Kept out of the default test run (pyproject's ``testpaths = ["tests"]``). The cases and the
timed functions are the harness's own (``spikefuse.benchmark``), so a regression here is a
regression of ``python -m spikefuse bench``. Compare runs with
``pytest bench --benchmark-only --benchmark-autosave`` and ``--benchmark-compare``.
"""

import jax
import pytest

from spikefuse.benchmark import elementwise as ew
from spikefuse.benchmark import neurons as nr

SHAPES = ["Sigmoid", "Arctan", "PiecewiseQuadratic", "GaussianGrad"]
ELEMENTS = 1 << 16
NEURON_CASES = [(32, 1024), (128, 256)]


def _bench(benchmark, fn, args):
    jax.block_until_ready(fn(*args))  # compile + warm up outside the timed rounds
    benchmark.pedantic(lambda: jax.block_until_ready(fn(*args)), rounds=30, iterations=5,
                       warmup_rounds=2)


@pytest.mark.parametrize("case", ew.cases(SHAPES, ["float32"], ELEMENTS), ids=lambda c: c.shape)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_fire_reference(benchmark, case, mode):
    benchmark.group = f"fire reference {mode} 2^16 f32"
    benchmark.extra_info.update(shape=case.shape, mode=mode, elements=case.elements,
                                dtype=case.dtype, backend="reference")
    _bench(benchmark, jax.jit(ew.make_ops(case.shape, "reference")[mode]), case.inputs())


@pytest.mark.parametrize("T,N", NEURON_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("mode", nr.MODES)
def test_lif_reference(benchmark, T, N, mode):
    benchmark.group = f"lif reference (lax.scan unroll=1) {mode}"
    benchmark.extra_info.update(T=T, N=N, mode=mode, dtype="float32", backend="scan-u1")
    fn = jax.jit(nr.make_fn(mode, "reference", unroll=1))
    _bench(benchmark, fn, nr.random_inputs(T, N, "float32"))
