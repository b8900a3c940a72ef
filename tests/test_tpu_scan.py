"""Tests for spikefuse.kernels.tpu_scan, the TPU (Mosaic) multi-step kernels, called directly.

In Pallas' TPU interpret mode (``pltpu.InterpretParams``: a simulator of the TPU's memories
that runs the "parallel" grid dims in a random order, fills uninitialised memory with NaN
and refuses revisited output blocks and out-of-bounds reads), the forward and BPTT kernels
must equal a ``lax.scan`` of the same step and its ``jax.vjp`` (written here): outputs and
states exactly, gradients to float32 rounding. Also: the GPU kernels' ``[T, N]`` call
signature, the layout and block heuristics, the grid the kernels launch, and refusals.
Every neuron through the library ("interpret_tpu") is in test_neurons.py and
test_engine.py; the lowering for tpu next to cuda's there and in test_spike_backends.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from neuron_oracle import _spike, sigmoid_gprime

from spikefuse.kernels import tpu_scan

import lowering

K = 4
CONFIG = tpu_scan.TpuScanConfig(chunk=K, block_rows=16, block_cols=128)
SPIKE = _spike(sigmoid_gprime(3.0))  # H(u), dH/du = g'(u) for Sigmoid(alpha=3), by hand


def step(state, xs, params):
    """Two states (v, a), one input, a per-neuron decay and scalar threshold and beta: the
    flat step contract of the kernels (tuples of rows in the compute dtype)."""
    v, a = state
    (x,) = xs
    decay, thr, beta = params
    h = v * decay + x
    theta = thr + beta * a
    s = SPIKE(h - theta)
    return (s,), (h - theta * s, 0.9 * a + 0.1 * s)


def scan_reference(x, v0, a0, params):
    """The same step by lax.scan: (spikes, (v_T, a_T))."""
    def body(state, x_t):
        (s,), new = step(state, (x_t,), params)
        return new, s

    final, s = jax.lax.scan(body, (v0, a0), x)
    return s, final


def _problem(T, cells, seed):
    rng = np.random.default_rng(seed)
    shape = (T, *cells)
    x = jnp.asarray(rng.normal(0.7, 0.8, shape), jnp.float32)
    v0 = jnp.asarray(rng.uniform(-0.3, 0.8, cells), jnp.float32)  # per neuron
    decay = jnp.asarray(rng.uniform(0.6, 0.9, cells), jnp.float32)  # per neuron
    ds = jnp.asarray(rng.normal(size=shape), jnp.float32)
    dv = jnp.asarray(rng.normal(size=cells), jnp.float32)
    return x, v0, decay, ds, dv


# (T, cells): T = 1 (one chunk, no checkpoints), K + 1 (a ragged last chunk), 3K + 5;
# [20, 150] is 2 x 2 ragged blocks of (16, 128); the GPU signature [T, N]: 300 neurons
# viewed [1, 300] (three ragged lane blocks), 384 viewed [3, 128].
@pytest.mark.parametrize("T, cells", [(1, (20, 150)), (K + 1, (300,)), (3 * K + 5, (20, 150)),
                                      (K, (384,))])
def test_kernels_in_tpu_interpret_mode(T, cells):
    x, v0, decay, ds, dv = _problem(T, cells, seed=T)
    one = lambda v: jnp.full((1,) * len(cells), v, jnp.float32)  # noqa: E731 (a shared value)
    a0, thr, beta = one(0.1), one(1.0), one(0.5)
    kw = dict(config=CONFIG, interpret=pltpu.InterpretParams())

    @jax.jit
    def fused(x, v0, decay, ds, dv):
        (s,), fins, cks = tpu_scan.scan_forward(
            step, (x,), (v0, a0), (decay, thr, beta), out_dtypes=(jnp.float32,),
            final_dtypes=(jnp.float32, jnp.float32), save_checkpoints=True, **kw)
        grads = tpu_scan.scan_backward(
            step, (x,), (v0, a0), cks, (decay, thr, beta), (ds,), (dv, None),
            want_x=(True,), want_init=(True, True), want_params=(True, False, True), **kw)
        return s, fins, cks, grads

    s, (v_T, a_T), cks, (dxs, dinit, dparams) = fused(x, v0, decay, ds, dv)
    n_ck = -(-T // K) - 1  # one per chunk boundary; none for a single chunk
    assert len(cks) == (2 if n_ck else 0) and all(c.shape == (n_ck, *cells) for c in cks)
    assert dparams[1] is None  # not asked for

    full = lambda a: jnp.broadcast_to(a.reshape(()), cells)  # noqa: E731
    ref_params = (decay, full(thr), full(beta))
    s_r, (v_r, a_r) = scan_reference(x, v0, full(a0), ref_params)
    np.testing.assert_array_equal(s, s_r)
    np.testing.assert_array_equal(v_T, v_r)
    np.testing.assert_array_equal(a_T, a_r)
    assert 0.02 < float(s_r.mean()) < 0.9  # spikes do happen

    _, pullback = jax.vjp(scan_reference, x, v0, full(a0), ref_params)
    gx, gv0, ga0, (gdecay, _, gbeta) = pullback((ds, (dv, jnp.zeros(cells))))
    for what, got, want in [("x", dxs[0], gx), ("v0", dinit[0], gv0), ("a0", dinit[1], ga0),
                            ("decay", dparams[0], gdecay), ("beta", dparams[2], gbeta)]:
        assert got.shape == want.shape, what  # per neuron: the caller reduces scalars
        scale = float(np.max(np.abs(want), initial=0.0))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


def test_layout_and_block_heuristics():
    assert tpu_scan.cells(()) == (1, 1)
    assert tpu_scan.cells((300,)) == (1, 300) and tpu_scan.cells((384,)) == (3, 128)
    assert tpu_scan.cells((8, 4, 1000)) == (32, 1000)  # the minor dim stays the lane dim
    # ~128 K neuron-steps per block: K = 8 with 512 lanes -> 32 rows; all of a small array.
    assert tpu_scan.default_blocks(8, 4096, 4096) == (32, 512)
    assert tpu_scan.default_blocks(32, 4096, 100) == (32, 100)
    assert tpu_scan.default_blocks(8, 3, 40) == (3, 40)
    # K as the GPU heuristic, so "pallas" keeps the same checkpoints on either platform.
    assert tpu_scan.default_config(32, 4 << 20, jnp.float32).chunk == 8
    assert tpu_scan.default_config(1024, 4096, jnp.float32).chunk == 32
    assert tpu_scan.default_config(5, 10, jnp.float32).chunk == 5
    for bad in (dict(chunk=0), dict(chunk=4, block_rows=8), dict(chunk=4, block_cols=96)):
        with pytest.raises(ValueError):
            tpu_scan.TpuScanConfig(**bad)
    with pytest.raises(ValueError, match="int32"):
        tpu_scan.check_size(2**16, 2**15, CONFIG)


def test_grid_blocks_and_lowering():
    """The forward's pallas_call: grid (row blocks, column blocks, time chunks) with
    ("parallel", "parallel", "arbitrary"), (K, bm, bd) blocks per step, squeezed (bm, bd)
    checkpoint rows, one f32 VMEM scratch per state leaf; the backward reads time blocks in
    reverse. Both lower for tpu (one Mosaic kernel each)."""
    T, cells = 3 * K + 5, (20, 150)
    x, v0, decay, ds, _ = _problem(T, cells, seed=0)
    one = jnp.ones((1, 1), jnp.float32)

    def fwd(x, v0, decay):
        return tpu_scan.scan_forward(step, (x,), (v0, one), (decay, one, one),
                                     out_dtypes=(jnp.bfloat16,), final_dtypes=(x.dtype,) * 2,
                                     config=CONFIG, interpret=False, save_checkpoints=True)

    [eqn] = [e for e in jax.make_jaxpr(fwd)(x, v0, decay).jaxpr.eqns
             if e.primitive.name == "pallas_call"]
    gm = eqn.params["grid_mapping"]
    assert gm.grid == (2, 2, 5)
    assert eqn.params["compiler_params"].dimension_semantics == (
        "parallel", "parallel", "arbitrary")
    sizes = [tuple(getattr(b, "block_size", b) for b in bm.block_shape)
             for bm in gm.block_mappings]
    assert sizes[0] == (K, 16, 128)  # x
    assert [len(s) for s in sizes[-2:]] == [3, 3] and sizes[-1][1:] == (16, 128)  # checkpoints
    assert len(eqn.params["jaxpr"].invars) == len(sizes) + 2  # + (v, a) scratch

    (_,), _, cks = jax.eval_shape(fwd, x, v0, decay)  # lowered for a TPU below, run nowhere
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, v0, decay)]
    assert lowering.export_for_tpu(fwd, *avals).count(lowering.TPU_CALL) == 1

    def bwd(x, v0, decay, ck_v, ck_a, ds):
        return tpu_scan.scan_backward(step, (x,), (v0, one), (ck_v, ck_a), (decay, one, one),
                                      (ds,), (None, None), config=CONFIG, interpret=False,
                                      want_x=(True,), want_init=(True, False),
                                      want_params=(False, False, True))

    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, v0, decay, *cks, ds)]
    assert cks[0].shape == (4, *cells)
    text = lowering.export_for_tpu(bwd, *avals)
    assert text.count(lowering.TPU_CALL) == 1 and "spikefuse_tpu_scan_bwd" in text


def test_refusals():
    x = jnp.zeros((5, 2, 3), jnp.float32)
    v0, one = jnp.zeros((2, 3), jnp.float32), jnp.ones((1, 1), jnp.float32)
    kw = dict(out_dtypes=(jnp.float32,), final_dtypes=(jnp.float32,) * 2, config=CONFIG,
              save_checkpoints=False)
    with pytest.raises(ValueError, match="input"):
        tpu_scan.scan_forward(step, (x, x[:4]), (v0, one), (one,) * 3, interpret=True, **kw)
    with pytest.raises(ValueError, match="state 1"):
        tpu_scan.scan_forward(step, (x,), (v0, jnp.ones(5)), (one,) * 3, interpret=True, **kw)
    with pytest.raises(TypeError, match="interpret"):
        tpu_scan.scan_forward(step, (x,), (v0, one), (one,) * 3, interpret="no", **kw)
    with jax.enable_x64(True):
        x64, v64, one64 = (a.astype(jnp.float64) for a in (x, v0, one))
        with pytest.raises(TypeError, match="float64"):  # Mosaic has none; interpret has
            tpu_scan.scan_forward(step, (x64,), (v64, one64), (one64,) * 3, interpret=False,
                                  **kw)
