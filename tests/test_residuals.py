"""The residual counter (``spikefuse.memory``, re-exported by ``spikefuse.benchmark.memory``)
and what each LIF backend keeps.

The counter is checked on hand-made functions whose residuals are known because the test
writes them: ``jax.custom_vjp`` forwards that save chosen arrays, and ``jax.checkpoint``,
which by definition saves its inputs only. Then the neurons: the fused LIF keeps its input
x (b bytes per neuron-step, re-read by its backward) plus at most 4/K bytes of membrane
checkpoints, K being the kernel's chunk, and nothing per step besides; the ``lax.scan``
reference keeps two f32 arrays per step (8 B per neuron-step).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spikefuse.neurons as sn
from spikefuse.benchmark import memory as bench_memory
from spikefuse.memory import residual_bytes
from spikefuse.memory import residuals as vjp_residuals
from spikefuse.kernels import scan

N = 1000


def _saving(*make_residuals):
    """f(x, y) = x * y whose forward saves ``make(x, y)`` for each maker; the backward is
    correct for the product only through the saved x and y it is handed."""

    @jax.custom_vjp
    def f(x, y):
        return x * y

    def fwd(x, y):
        return x * y, tuple(m(x, y) for m in make_residuals)

    def bwd(res, ct):
        return ct, ct

    f.defvjp(fwd, bwd)
    return f


def _args(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=N), dtype), jnp.asarray(rng.normal(size=N), dtype))


def test_counts_exactly_what_a_custom_vjp_saves():
    f = _saving(lambda x, y: x,                                   # an input: N * 4
                lambda x, y: 2.0 * y,                             # a new array: N * 4
                lambda x, y: jnp.zeros((), jnp.float32),          # 4
                lambda x, y: jnp.zeros((3, 5), jnp.bfloat16))     # 30
    x, y = _args()
    assert residual_bytes(f, x, y) == 4 * N + 4 * N + 4 + 30
    assert residual_bytes(f, x, y, exclude_inputs=True) == 4 * N + 4 + 30
    assert residual_bytes(f, x, y, exclude_inputs=True, per=N) == pytest.approx(4 + 34 / N)
    got = sorted((r.shape, r.dtype, r.nbytes, r.is_input) for r in vjp_residuals(f, x, y))
    assert got == sorted([((N,), "float32", 4 * N, True), ((N,), "float32", 4 * N, False),
                          ((), "float32", 4, False), ((3, 5), "bfloat16", 30, False)])


def test_an_array_held_twice_counts_once_and_dtypes_count_their_size():
    f = _saving(lambda x, y: y, lambda x, y: y, lambda x, y: (x + y).astype(jnp.float16))
    x, y = _args()
    assert residual_bytes(f, x, y) == 4 * N + 2 * N
    xb, yb = _args(jnp.bfloat16)
    assert residual_bytes(f, xb, yb) == 2 * N + 2 * N
    assert residual_bytes(f, xb, yb, exclude_inputs=True) == 2 * N


def test_checkpoint_keeps_its_inputs_only():
    x, _ = _args()
    f = jax.checkpoint(lambda x: jnp.exp(jnp.sin(x)) * jnp.cos(x))
    assert residual_bytes(f, x) == 4 * N
    assert residual_bytes(f, x, exclude_inputs=True) == 0


def test_inputs_in_pytrees_are_recognised():
    f = _saving(lambda x, y: x, lambda x, y: y)
    x, y = _args()
    g = lambda d: f(d["a"], d["b"][0])  # noqa: E731
    assert residual_bytes(g, {"a": x, "b": [y]}, exclude_inputs=True) == 0
    assert residual_bytes(g, {"a": x, "b": [y]}) == 8 * N


def test_the_benchmark_counts_with_the_same_counter():
    assert bench_memory.residual_bytes is residual_bytes
    assert bench_memory.vjp_residuals is vjp_residuals


def test_nothing_is_computed_or_allocated():
    huge = jax.ShapeDtypeStruct((1 << 40,), jnp.float32)  # 4 TiB: only traced
    assert residual_bytes(jax.checkpoint(jnp.sin), huge) == 4 << 40


# -- the neurons ----------------------------------------------------------------------------
T, NEURONS = 100, 96
SCALARS_MAX = 64  # a handful of scalar parameters (1/tau, thresholds, v0, alpha)


def _lif(backend, config=None):
    return lambda x: sn.lif(x, tau=2.0, backend=backend, config=config)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_lif_keeps_its_input_and_checkpoints_only(dtype):
    K = 8
    config = scan.ScanConfig(block=32, chunk=K, num_warps=1)
    b = jnp.dtype(dtype).itemsize
    x = jax.ShapeDtypeStruct((T, NEURONS), jnp.dtype(dtype))
    res = vjp_residuals(_lif("interpret", config), x)
    per_step = residual_bytes(_lif("interpret", config), x, per=T * NEURONS)
    # x itself, b bytes per neuron-step, re-read by the backward:
    assert any(r.is_input and r.shape == (T, NEURONS) and r.nbytes == b * T * NEURONS
               for r in res)
    assert b <= per_step <= b + 4 / K + SCALARS_MAX / (T * NEURONS)
    # Beyond x, nothing per step: the checkpoints are fewer than T / K rows of neurons.
    others = [r for r in res if not r.is_input]
    assert sum(r.nbytes for r in others if r.nbytes > SCALARS_MAX) <= 4 * NEURONS * T / K
    assert sum(r.nbytes for r in others if r.nbytes <= SCALARS_MAX) <= SCALARS_MAX


def test_fused_lif_keeps_no_checkpoint_when_the_sequence_is_one_chunk():
    config = scan.ScanConfig(block=32, chunk=128, num_warps=1)
    x = jax.ShapeDtypeStruct((T, NEURONS), jnp.float32)
    assert residual_bytes(_lif("interpret", config), x, exclude_inputs=True) <= SCALARS_MAX


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reference_lif_keeps_two_f32_arrays_per_step(dtype):
    """What XLA keeps through lax.scan today (docs/benchmarks.md and bench/RESULTS.md quote it): if
    this changes, update those numbers."""
    x = jax.ShapeDtypeStruct((T, NEURONS), jnp.dtype(dtype))
    res = vjp_residuals(_lif("reference"), x)
    per_step = [r for r in res if r.nbytes > SCALARS_MAX]
    assert [(r.shape, r.dtype) for r in per_step] == [((T, NEURONS), "float32")] * 2
    assert not any(r.is_input for r in per_step)  # x itself is not kept
    assert residual_bytes(_lif("reference"), x, exclude_inputs=True, per=T * NEURONS) == \
        pytest.approx(8.0, abs=SCALARS_MAX / (T * NEURONS))
