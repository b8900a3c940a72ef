"""``spikefuse.memory``: spikes kept as bits, blocks recomputed, and the residual counter.

Expected values come from plain JAX written here: ``jnp.matmul``, ``lax.conv_general_dilated``
and the block functions themselves, differentiated by ``jax.grad`` with random cotangents.
The gradients must be equal bit for bit (CPU): the backward runs JAX's own transpose on the
rebuilt operand. What is kept is counted with the residual counter (itself checked against
hand-made ``custom_vjp`` functions in ``test_residuals.py``), and the expected sizes are
computed here from the shapes: a test that fails if x, or the spikes in float, were kept.
"""

import functools
import importlib
import math
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spikefuse import memory
from spikefuse.neurons import ALIF, LIF, multistep
from spikefuse.surrogate import Sigmoid

RNG = np.random.default_rng(0)


def spikes(shape, dtype=jnp.float32, rate=0.3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape) < rate, dtype)


def normal(shape, dtype=jnp.float32, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def loss_grads(f, *args, seed=2):
    """Value and gradients (to every argument) of ``sum(f(*args) * ct)``, jitted."""
    out = jax.eval_shape(f, *args)
    ct = normal(out.shape, out.dtype, seed)
    return jax.jit(jax.value_and_grad(lambda *a: (f(*a) * ct).sum(),
                                      argnums=tuple(range(len(args)))))(*args)


def assert_bitwise(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(np.asarray(g, np.float64), np.asarray(w, np.float64))


def assert_close(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        scale = float(np.max(np.abs(np.asarray(w, np.float64)), initial=0.0))
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64),
                                   rtol=1e-5, atol=1e-6 * scale)


def bits_bytes(shape, axis=-1):
    """uint8 words of 0/1 packed along ``axis``: the other axes times ceil(n / 8)."""
    shape = list(shape)
    shape[axis] = math.ceil(shape[axis] / 8)
    return math.prod(shape)


# -- spike_matmul ------------------------------------------------------------------------------
MATMULS = [  # spikes shape, w shape: odd sizes (tails of the packing), ranks 1-3, batched w
    ((5, 7, 43), (43, 11)),
    ((37,), (37, 5)),
    ((9, 8), (8, 3)),
    ((3, 9, 17), (3, 17, 4)),
]


@pytest.mark.parametrize("s_shape,w_shape,dtype,w_dtype", [
    (*MATMULS[0], "float32", "float32"), (*MATMULS[0], "bfloat16", "bfloat16"),
    (*MATMULS[1], "bfloat16", "float32"), (*MATMULS[2], "float16", "float32"),
    (*MATMULS[3], "float32", "float32")])
def test_spike_matmul_gradients_equal_plain_jax_bitwise(s_shape, w_shape, dtype, w_dtype):
    s, w = spikes(s_shape, dtype), normal(w_shape, w_dtype)
    want = loss_grads(jnp.matmul, s, w)
    got = loss_grads(memory.spike_matmul, s, w)
    assert_bitwise(got, want)
    assert float(jnp.abs(got[1][1]).max()) > 0  # w gets a gradient through the rebuilt spikes


def test_spike_matmul_keeps_bits_and_w_only():
    s, w = spikes((6, 5, 43)), normal((43, 11))
    kept = memory.residuals(memory.spike_matmul, s, w)
    assert sorted((r.dtype, r.nbytes, r.argnum) for r in kept) == sorted(
        [("float32", w.nbytes, 1), ("uint8", bits_bytes(s.shape), None)])
    # plain JAX keeps the spikes in float32: 4 bytes each, 32x the bits
    assert memory.residual_bytes(jnp.matmul, s, w, exclude_inputs=(1,)) == s.nbytes


def test_spike_matmul_under_vmap_and_jit():
    s, w = spikes((4, 6, 19)), normal((4, 19, 5))
    f = jax.vmap(memory.spike_matmul)
    assert_bitwise(loss_grads(f, s, w), loss_grads(jax.vmap(jnp.matmul), s, w))
    # vmap of the gradient, too
    g = jax.jit(jax.vmap(jax.grad(lambda s, w: memory.spike_matmul(s, w).sum(), (0, 1))))
    want = jax.jit(jax.vmap(jax.grad(lambda s, w: jnp.matmul(s, w).sum(), (0, 1))))
    assert_bitwise(g(s, w), want(s, w))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_spikes_are_rebuilt_exactly(dtype):
    # The gradient of sum(s @ E) to E (ones) is s^T 1: the column sums of the rebuilt spikes,
    # whatever the tail of the last packed word (every size below in one compiled program).
    sizes = (1, 7, 8, 9, 31, 33)
    ss = [spikes((3, n), dtype, rate=0.5, seed=n) for n in sizes]
    grad = jax.jit(jax.grad(lambda es, ss: sum(memory.spike_matmul(s, e).sum()
                                                for s, e in zip(ss, es))))
    got = grad([jnp.ones((n, 1), dtype) for n in sizes], ss)
    for g, s in zip(got, ss):
        assert g.dtype == s.dtype
        np.testing.assert_array_equal(np.asarray(g, np.float32)[:, 0],
                                      np.asarray(s, np.float32).sum(0))


# -- spike_conv --------------------------------------------------------------------------------
CONVS = {  # name: (lhs shape, rhs shape, strides, padding, kwargs)
    "nchw-same": ((2, 3, 9, 11), (4, 3, 3, 3), (1, 1), "SAME", {}),
    "strided-valid": ((2, 3, 13, 10), (5, 3, 3, 2), (2, 3), "VALID", {}),
    "explicit-padding": ((1, 2, 7, 7), (3, 2, 2, 4), (1, 2), ((1, 2), (0, 3)), {}),
    "dilated": ((2, 2, 12, 9), (3, 2, 3, 3), (1, 1), ((2, 1), (1, 1)),
                dict(rhs_dilation=(2, 1), lhs_dilation=(1, 2))),
    "nhwc-groups": ((2, 9, 7, 6), (3, 3, 3, 4), (1, 1), "SAME",
                    dict(dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)),
    "batch-groups": ((4, 3, 8, 8), (6, 3, 3, 3), (1, 1), "VALID", dict(batch_group_count=2)),
    "1d": ((3, 5, 29), (7, 5, 4), (2,), "SAME", {}),
    "3d-nhwc-odd": ((2, 5, 5, 3, 3), (2, 2, 2, 3, 5), (1, 1, 1), "VALID",
                    dict(dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_spike_conv_gradients_equal_plain_jax_bitwise(name):
    lhs, rhs, strides, padding, kw = CONVS[name]
    dtype = "bfloat16" if name in ("strided-valid", "nhwc-groups", "1d") else "float32"
    s, w = spikes(lhs, dtype), normal(rhs, dtype)
    plain = functools.partial(jax.lax.conv_general_dilated, window_strides=strides,
                              padding=padding, **kw)
    ours = lambda s, w: memory.spike_conv(s, w, strides, padding, **kw)  # noqa: E731
    got, want = loss_grads(ours, s, w), loss_grads(plain, s, w)
    assert_bitwise(got, want)
    assert float(jnp.abs(got[1][1].astype(jnp.float32)).max()) > 0


def test_spike_conv_keeps_bits_and_w_only_and_vmaps():
    lhs, rhs, strides, padding, kw = CONVS["nhwc-groups"]
    s, w = spikes(lhs), normal(rhs)
    f = lambda s, w: memory.spike_conv(s, w, strides, padding, **kw)  # noqa: E731
    kept = memory.residuals(f, s, w)
    assert sorted((r.dtype, r.nbytes, r.argnum) for r in kept) == sorted(
        [("float32", w.nbytes, 1), ("uint8", bits_bytes(s.shape), None)])
    plain = functools.partial(jax.lax.conv_general_dilated, window_strides=strides,
                              padding=padding, **kw)
    sv = jnp.stack([s, spikes(lhs, seed=5)])
    wv = jnp.stack([w, normal(rhs, seed=6)])
    assert_bitwise(loss_grads(jax.vmap(f), sv, wv), loss_grads(jax.vmap(plain), sv, wv))
    # A w shared by the mapped axis: its gradient is summed over that axis after the
    # backward (plain JAX: inside one convolution), so equal to float32 rounding
    assert_close(loss_grads(jax.vmap(f, (0, None)), sv, w),
                 loss_grads(jax.vmap(plain, (0, None)), sv, w))


# -- checkpoint --------------------------------------------------------------------------------
T, B, N_IN, N_OUT = 6, 3, 21, 13


def _user_step(state, x_t, params, fire):
    """A user's two-state neuron (the engine's contract): a LIF with a decaying trace."""
    v, a = state
    h = v + (x_t - v) * params["k"] - a
    s = fire(h, 1.0)
    return s, (h * (1.0 - s), 0.8 * a + 0.2 * s)


def user_neuron(backend):
    def neuron(x):
        init = (jnp.zeros(x.shape[1:]), jnp.zeros(x.shape[1:]))
        return multistep(_user_step, x, init, {"k": 0.5}, surrogate=Sigmoid(alpha=4.0),
                         backend=backend)
    return neuron


NEURONS = {
    "lif": lambda backend: LIF(tau=2.0, backend=backend),
    "alif": lambda backend: ALIF(tau=2.0, tau_a=5.0, beta=0.5, backend=backend),
    "user-step": user_neuron,
}


def dense_block(neuron):
    def block(w, s):  # [T, B, N_IN] spikes -> [T, B, N_OUT] spikes
        return neuron(s @ w)[0]
    return block


@pytest.mark.parametrize("backend", ["reference", "interpret"])
@pytest.mark.parametrize("neuron", list(NEURONS))
def test_checkpoint_block_gradients_equal_the_plain_block(neuron, backend):
    block = dense_block(NEURONS[neuron](backend))
    s, w = spikes((T, B, N_IN)), normal((N_IN, N_OUT))
    want = loss_grads(block, w, s)
    got = loss_grads(memory.checkpoint(block, spike_argnums=1), w, s)
    assert_bitwise(got, want)
    assert 0 < float(want[0]) or float(jnp.abs(want[1][0]).max()) > 0  # fires and trains


@pytest.mark.parametrize("backend", ["reference", "interpret"])
@pytest.mark.parametrize("neuron", list(NEURONS))
def test_checkpoint_keeps_the_spikes_as_bits_and_nothing_computed(neuron, backend):
    block = dense_block(NEURONS[neuron](backend))
    s, w = spikes((T, B, N_IN)), normal((N_IN, N_OUT))
    kept = memory.residuals(memory.checkpoint(block, spike_argnums=1), w, s)
    assert sorted((r.dtype, r.nbytes, r.argnum) for r in kept) == sorted(
        [("float32", w.nbytes, 0), ("uint8", bits_bytes(s.shape), None)])
    # Plain: the spikes in float32 and the neuron's residuals (x, or per-step states)
    plain = memory.residual_bytes(block, w, s, exclude_inputs=(0,))
    assert plain >= s.nbytes + 4 * T * B * N_OUT


def test_checkpoint_conv_block_with_pool_and_kwargs():
    neuron = LIF(tau=2.0, backend="interpret")

    def block(w, s, scale=1.0):  # avg-pool the spikes (no longer 0/1 inside), conv, LIF
        p = s.reshape(T * B, 4, 2, 5, 2, 3).mean(axis=(2, 4))
        x = jax.lax.conv_general_dilated(p, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return neuron(scale * x.reshape(T, B, *x.shape[1:]))[0]

    s, w = spikes((T, B, 8, 10, 3)), normal((3, 3, 3, 4))
    want = loss_grads(lambda w, s: block(w, s, scale=2.0), w, s)
    ckpt = memory.checkpoint(block, spike_argnums=(1,))
    assert_bitwise(loss_grads(lambda w, s: ckpt(w, s, scale=2.0), w, s), want)
    kept = memory.residuals(lambda w, s: ckpt(w, s, scale=2.0), w, s)
    assert sorted(r.nbytes for r in kept if r.argnum is None) == [bits_bytes(s.shape)]


def test_checkpoint_closure_pytrees_static_and_second_order():
    neuron = LIF(tau=2.0, backend="reference")
    s, w = spikes((T, B, N_IN)), normal((N_IN, N_OUT))
    params = {"w": w, "b": jnp.full((N_OUT,), 0.1)}

    def block(p, inputs, mode):  # inputs: a pytree of spikes; mode: a static string
        assert mode == "sum"
        return neuron((inputs[0] + inputs[1]) @ p["w"] + p["b"])[0]

    def outer(p, s, ckpt):  # the checkpointed function closes over the traced p
        f = lambda inputs: block(p, inputs, "sum")  # noqa: E731
        if ckpt:
            f = memory.checkpoint(f, spike_argnums=0)
        return f((s, 1.0 - s))

    assert_bitwise(loss_grads(functools.partial(outer, ckpt=True), params, s),
                   loss_grads(functools.partial(outer, ckpt=False), params, s))
    static = memory.checkpoint(block, spike_argnums=1, static_argnums=2)
    assert_bitwise(loss_grads(lambda p, s: static(p, (s, 1.0 - s), "sum"), params, s),
                   loss_grads(lambda p, s: block(p, (s, 1.0 - s), "sum"), params, s))

    def second(ckpt):  # d/dw of (d loss/dw . v): second order through the recomputation
        v = normal(w.shape, seed=7)
        g = jax.grad(lambda w: outer({"w": w, "b": params["b"]}, s, ckpt).sum())
        return jax.jit(jax.grad(lambda w: (g(w) * v).sum()))(w)

    assert_bitwise(second(True), second(False))


def test_checkpoint_under_vmap():
    block = dense_block(LIF(tau=2.0, backend="reference"))
    s, w = spikes((2, T, B, N_IN)), normal((2, N_IN, N_OUT))
    ckpt = jax.vmap(memory.checkpoint(block, spike_argnums=1))
    assert_bitwise(loss_grads(ckpt, w, s), loss_grads(jax.vmap(block), w, s))
    # w shared by the mapped axis: summed after the backward (see the conv test)
    shared = jax.vmap(memory.checkpoint(block, spike_argnums=1), (None, 0))
    assert_close(loss_grads(shared, w[0], s), loss_grads(jax.vmap(block, (None, 0)), w[0], s))


def test_forward_mode_is_refused():
    s, w = spikes((4, 8)), normal((8, 2))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(memory.spike_matmul, (s, w), (s, w))


# -- the 0/1 contract --------------------------------------------------------------------------
def _half_spike():
    s = spikes((4, 8))
    return s.at[1, 3].set(0.5), normal((8, 2))


def test_check_raises_on_a_half_spike_naming_the_argument():
    s, w = _half_spike()
    with pytest.raises(ValueError, match=r"spikes must hold only 0 and 1.*spikes\[1, 3\] = 0.5"):
        memory.spike_matmul(s, w, check=True)
    with pytest.raises(ValueError, match=r"spikes\[0, 0, 1, 3\] = 0.5"):
        memory.spike_conv(s[None, None], w[None, None], (1, 1), "VALID", check=True)

    def block(w, x, s):
        return jnp.tanh(x @ w) * s.sum()

    ckpt = memory.checkpoint(block, spike_argnums=2, check=True)
    with pytest.raises(ValueError, match=r"argument 2 of block \(spike_argnums\) must hold only"):
        ckpt(w, s, s)
    ckpt(w, s, jnp.round(s))  # x is not a spike argument: 0.5 is fine there
    # no check asked for: the value is not looked at (and would be rebuilt as 1)
    memory.spike_matmul(s, w)


def test_check_under_jit_raises_when_the_program_runs():
    s, w = _half_spike()
    f = jax.jit(jax.grad(lambda w, s: memory.spike_matmul(s, w, check=True).sum()))
    # jax raises its runtime error (the type differs between versions), holding ours
    with pytest.raises(Exception, match=r"spikes must hold only 0 and 1.*spikes\[1, 3\] = 0.5"):
        jax.block_until_ready(f(w, s))
    good = jnp.round(s)  # a valid input: checked, and the gradient is plain JAX's
    assert_bitwise(f(w, good), jax.jit(jax.grad(lambda w, s: (s @ w).sum()))(w, good))


def test_check_environment_variable(monkeypatch):
    s, w = _half_spike()
    monkeypatch.setenv(memory.CHECK_ENV, "1")
    with pytest.raises(ValueError, match="spikes must hold only 0 and 1"):
        memory.spike_matmul(s, w)
    memory.spike_matmul(s, w, check=False)  # an explicit check=False wins
    ckpt = memory.checkpoint(lambda w, s: s @ w, spike_argnums=1)  # read at the call
    with pytest.raises(ValueError, match="argument 1 of <lambda>"):
        ckpt(w, s)
    monkeypatch.setenv(memory.CHECK_ENV, "0")
    memory.spike_matmul(s, w)
    ckpt(w, s)


@pytest.mark.parametrize("call,err,match", [
    (lambda: memory.spike_matmul(jnp.ones((2, 3), jnp.int32), jnp.ones((3, 2))), TypeError,
     "spikes must be a floating array"),
    (lambda: memory.spike_matmul(jnp.ones((2, 3)), jnp.ones((3, 2)), check="yes"), TypeError,
     "check must be a bool"),
    (lambda: memory.spike_conv(jnp.ones((1, 1, 4, 4)), jnp.ones((1, 1, 2, 2)), (1, 1), "SAME",
                               stride=2), TypeError, "unexpected keyword argument"),
    (lambda: memory.checkpoint(3), TypeError, "fn must be callable"),
    (lambda: memory.checkpoint(jnp.sin, spike_argnums="0"), TypeError, "spike_argnums must"),
    (lambda: memory.checkpoint(jnp.sin, spike_argnums=0, static_argnums=0), ValueError,
     "both spike_argnums and static_argnums"),
    (lambda: memory.checkpoint(jnp.sin, spike_argnums=1)(jnp.ones(3)), ValueError,
     r"spike_argnums \[1\] out of range"),
    (lambda: memory.checkpoint(jnp.sin, spike_argnums=0)(jnp.ones(3, jnp.int32)), TypeError,
     r"argument 0 of sin \(spike_argnums\) must be a floating array"),
])
def test_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()


# -- scan: chunks of time, recomputed ----------------------------------------------------------
# Each neuron as f(carry, x_chunk) -> (carry, spikes) over a chunk, its state carried on.
CARRIED = {
    "lif": (lambda backend: LIF(tau=2.0, backend=backend), lambda shape: jnp.zeros(shape, jnp.float32)),
    "alif": (lambda backend: lambda x, c: ALIF(tau=2.0, tau_a=5.0, beta=0.5, backend=backend)(
        x, *c), lambda shape: (jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))),
    "user-step": (lambda backend: lambda x, c: multistep(
        _user_step, x, c, {"k": 0.5}, surrogate=Sigmoid(alpha=4.0), backend=backend),
        lambda shape: (jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))),
}
T_SCAN = 12


def carried_layer(neuron, w):
    def f(carry, s_chunk):
        out, carry = neuron(s_chunk @ w, carry)
        return carry, out
    return f


def by_lax_scan(f, init, xs, chunks):
    """The same chunks through ``lax.scan``: the reference memory.scan must equal."""
    steps = T_SCAN // chunks
    carry, ys = jax.lax.scan(f, init, jax.tree.map(
        lambda x: x.reshape(chunks, steps, *x.shape[1:]), xs))
    return carry, jax.tree.map(lambda y: y.reshape(T_SCAN, *y.shape[2:]), ys)


def carry_and_ys_grads(run, w, init, s):
    """Value and gradients of a loss of both the last carry and every output."""
    ct_y = normal((T_SCAN, B, N_OUT), seed=5)

    def loss(w, init, s):
        carry, ys = run(w, init, s)
        return (ys * ct_y).sum() + sum((c * (i + 1.5)).sum()
                                       for i, c in enumerate(jax.tree.leaves(carry)))
    return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(w, init, s)


@pytest.mark.parametrize("backend", ["reference", "interpret"])
@pytest.mark.parametrize("neuron", list(CARRIED))
@pytest.mark.parametrize("chunks", [1, 3, 12])
def test_scan_equals_lax_scan_over_the_same_chunks(neuron, backend, chunks):
    make, zeros = CARRIED[neuron]
    s, w = spikes((T_SCAN, B, N_IN)), normal((N_IN, N_OUT))  # 21 inputs: a packing tail
    init = jax.tree.map(lambda z: z + 0.3, zeros((B, N_OUT)))

    def mine(w, init, s):
        return memory.scan(carried_layer(make(backend), w), init, s, chunks=chunks)

    def plain(w, init, s):
        return by_lax_scan(carried_layer(make(backend), w), init, s, chunks)

    assert_bitwise(jax.jit(mine)(w, init, s), jax.jit(plain)(w, init, s))  # the forward
    got, want = carry_and_ys_grads(mine, w, init, s), carry_and_ys_grads(plain, w, init, s)
    assert_close(got, want)  # the order of summation across chunks may differ by an ulp
    assert float(jnp.abs(want[1][2]).max()) > 0  # the spikes get a gradient: it fires


@pytest.mark.parametrize("backend", ["reference", "interpret"])
@pytest.mark.parametrize("neuron", ["lif", "alif"])
def test_scan_recomputing_the_carries_equals_lax_scan_and_holds_none(neuron, backend):
    """carries="recompute": each chunk's start recomputed from init in the backward, no
    buffer of the chunks - 1 carries ("sweep" holds one: its absence is what is saved); the
    forward and the gradients those of lax.scan over the same chunks."""
    make, zeros = CARRIED[neuron]
    s, w = spikes((T_SCAN, B, N_IN)), normal((N_IN, N_OUT))
    init = jax.tree.map(lambda z: z + 0.3, zeros((B, N_OUT)))

    def mine(carries):
        return lambda w, init, s: memory.scan(carried_layer(make(backend), w), init, s,
                                              chunks=12, carries=carries)

    def plain(w, init, s):
        return by_lax_scan(carried_layer(make(backend), w), init, s, 12)

    assert_bitwise(jax.jit(mine("recompute"))(w, init, s), jax.jit(plain)(w, init, s))
    assert_close(carry_and_ys_grads(mine("recompute"), w, init, s),
                 carry_and_ys_grads(plain, w, init, s))
    held = f"f32[11,{B},{N_OUT}]"  # the 11 carries at the starts of chunks 1 .. 11

    def compiled(carries):
        grad = jax.grad(lambda w: mine(carries)(w, init, s)[1].sum())
        return jax.jit(grad).lower(w).compile().as_text()

    assert held in compiled("sweep") and held not in compiled("recompute")


def test_scan_keeps_the_bits_and_its_inputs_only():
    lif = LIF(tau=2.0)
    s, w = spikes((T_SCAN, B, N_IN)), normal((N_IN, N_OUT))
    v0 = normal((B, N_OUT), seed=3)

    def run(w, v0, s):
        return memory.scan(carried_layer(lif, w), v0, s, chunks=4)

    kept = memory.residuals(run, w, v0, s)
    assert sorted((r.dtype, r.nbytes, r.argnum) for r in kept) == sorted(
        [("float32", w.nbytes, 0), ("float32", v0.nbytes, 1),
         ("uint8", bits_bytes(s.shape), None)])
    # a ShapeDtypeStruct init: zeros built inside, not kept; spikes=False: xs kept as is
    zeros = jax.ShapeDtypeStruct(v0.shape, v0.dtype)
    data = memory.residuals(lambda w, s: memory.scan(carried_layer(lif, w), zeros, s,
                                                     chunks=4, spikes=False), w, s)
    assert sorted((r.dtype, r.nbytes, r.argnum) for r in data) == sorted(
        [("float32", w.nbytes, 0), ("float32", s.nbytes, 1)])
    # lax.scan over jax.checkpoint'ed chunks keeps the carry at every chunk start and s
    remat = memory.residual_bytes(lambda w, v0, s: by_lax_scan(
        jax.checkpoint(carried_layer(lif, w)), v0, s, 4), w, v0, s, exclude_inputs=(0,))
    assert remat >= s.nbytes + 3 * v0.nbytes


def test_scan_pytrees_mixed_spikes_bf16_and_zero_init():
    """xs a dict of a bf16 spike train and float32 data; the carry a tuple, one leaf zeros."""
    lif = LIF(tau=2.0)
    xs = {"s": spikes((T_SCAN, B, N_IN), jnp.bfloat16), "d": normal((T_SCAN, B, N_OUT))}
    w = normal((N_IN, N_OUT))

    def f(carry, x):
        v, total = carry
        out, v = lif((x["s"] @ w.astype(jnp.bfloat16)).astype(jnp.float32) + x["d"], v)
        return (v, total + out.sum(0)), {"out": out}

    def mine(w, xs):
        init = (jax.ShapeDtypeStruct((B, N_OUT), jnp.float32), jnp.ones((B, N_OUT), jnp.float32))
        return memory.scan(f, init, xs, chunks=3, spikes={"s": True, "d": False})

    def plain(w, xs):
        return by_lax_scan(f, (jnp.zeros((B, N_OUT), jnp.float32), jnp.ones((B, N_OUT), jnp.float32)), xs, 3)

    def loss(run):
        return lambda w, xs: sum((leaf * (i + 1)).sum() for i, leaf in enumerate(
            jax.tree.leaves(run(w, xs))))

    got = jax.jit(jax.value_and_grad(loss(mine), (0, 1)))(w, xs)
    want = jax.jit(jax.value_and_grad(loss(plain), (0, 1)))(w, xs)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert got[1][1]["s"].dtype == jnp.bfloat16
    assert_close(got, want)


def test_scan_gives_a_python_float_init_the_carry_dtype_like_lax_scan():
    """A Python float in ``init`` takes the dtype of the carry ``f`` returns for it, as in
    ``lax.scan`` (bfloat16 here): made float32 up front, it would run the sum in float32 and
    return another carry than ``lax.scan`` does."""
    lif = LIF(tau=2.0)
    s, w = spikes((T_SCAN, B, N_IN), jnp.bfloat16), normal((N_IN, N_OUT), jnp.bfloat16)

    def f(carry, s_chunk):
        v, total = carry
        out, v = lif(s_chunk @ w, v)
        return (v, total + (out * v).sum()), out

    init = (jnp.zeros((B, N_OUT), jnp.bfloat16), 0.0)
    got = jax.jit(lambda s: memory.scan(f, init, s, chunks=3))(s)
    want = jax.jit(lambda s: by_lax_scan(f, init, s, 3))(s)
    assert want[0][1].dtype == jnp.bfloat16
    assert_bitwise(got, want)
    assert float(got[0][1]) != 0  # the sum is of something


def test_scan_under_vmap_equals_one_example_at_a_time():
    lif = LIF(tau=2.0, backend="interpret")
    s, w = spikes((5, T_SCAN, B, N_IN)), normal((N_IN, N_OUT))
    v0 = jax.ShapeDtypeStruct((B, N_OUT), jnp.float32)

    def one(w, s):
        return memory.scan(carried_layer(lif, w), v0, s, chunks=4)[1].sum()

    got = jax.jit(jax.vmap(jax.grad(one), (None, 0)))(w, s)
    want = [jax.jit(jax.grad(one))(w, s[i]) for i in range(5)]
    assert_close(got, jnp.stack(want))


@pytest.mark.parametrize("carries", ["sweep", "recompute"])
def test_scan_second_order_equals_lax_scan(carries):
    """Hessian-vector products, reverse over reverse and forward over reverse."""
    lif = LIF(tau=2.0, backend="reference")
    s, w, v = spikes((T_SCAN, B, N_IN)), normal((N_IN, N_OUT)), normal((N_IN, N_OUT), seed=4)

    def loss(run):
        def f(w):
            def chunk(c, x):
                out, c = lif(2 * jnp.tanh(x @ w), c)
                return c, out
            return run(chunk, jnp.zeros((B, N_OUT), jnp.float32), s)[1].sum() + 0.1 * (w ** 3).sum()
        return f

    mine = loss(lambda f, init, s: memory.scan(f, init, s, chunks=4, carries=carries))
    plain = loss(lambda f, init, s: by_lax_scan(f, init, s, 4))
    for run in (lambda g: jax.grad(lambda w: jnp.vdot(jax.grad(g)(w), v))(w),
                lambda g: jax.jvp(jax.grad(g), (w,), (v,))[1]):
        assert_close(run(mine), run(plain))


def test_scan_check_raises_on_a_half_spike():
    s = spikes((T_SCAN, B, N_IN)).at[2, 1, 3].set(0.5)
    f = carried_layer(LIF(), normal((N_IN, N_OUT)))
    init = jnp.zeros((B, N_OUT), jnp.float32)
    with pytest.raises(ValueError, match=r"xs leaf 0 \(spikes\)\[2, 1, 3\] = 0.5"):
        memory.scan(f, init, s, chunks=4, check=True)
    memory.scan(f, init, s, chunks=4, spikes=False, check=True)  # data: not checked


def _step(c, x):
    return c, x


@pytest.mark.parametrize("call,err,match", [
    (lambda: memory.scan(3, 0.0, jnp.ones((4, 2)), chunks=2), TypeError, "f must be callable"),
    (lambda: memory.scan(_step, 0.0, jnp.ones((4, 2)), chunks=True), TypeError,
     "chunks must be an int"),
    (lambda: memory.scan(_step, 0.0, jnp.ones((4, 2)), chunks=0), ValueError,
     "chunks must be at least 1"),
    (lambda: memory.scan(_step, 0.0, jnp.ones((6, 2)), chunks=4), ValueError,
     r"chunks \(4\) must divide the length of xs \(6\)"),
    (lambda: memory.scan(_step, 0.0, (), chunks=1), ValueError, "xs must hold at least one"),
    (lambda: memory.scan(_step, 0.0, (jnp.ones((4, 2)), jnp.ones((3, 2))), chunks=1),
     ValueError, "same first axis"),
    (lambda: memory.scan(_step, 0.0, jnp.ones(4), chunks=2), ValueError,
     "needs a time axis and a feature axis"),
    (lambda: memory.scan(_step, 0.0, jnp.ones((4, 2), jnp.int32), chunks=2, spikes=False),
     TypeError, "xs leaf 0 must be floating"),
    (lambda: memory.scan(_step, 0, jnp.ones((4, 2)), chunks=2), TypeError,
     "init must be floating"),
    (lambda: memory.scan(_step, 0.0, (jnp.ones((4, 2)),), chunks=2, spikes=[True]),
     TypeError, "spikes must be a bool or a pytree of bools"),
    (lambda: memory.scan(lambda c, x: (x.sum(0), x), 0.0, jnp.ones((4, 2)), chunks=2),
     TypeError, "f must return a carry like the one it is given"),
    (lambda: memory.scan(lambda c, x: (c, x[:1]), 0.0, jnp.ones((4, 2)), chunks=2),
     ValueError, r"needs 2 steps \(T / chunks\)"),
    (lambda: memory.scan(_step, 0.0, jnp.ones((4, 2)), chunks=2, carries="keep"), ValueError,
     "carries must be 'sweep' or 'recompute', got 'keep'"),
])
def test_scan_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()


# -- residual_bytes per layer ------------------------------------------------------------------
def test_residual_bytes_per_layer_adds_up_and_names_who_keeps_what():
    lif = LIF(tau=2.0, backend="reference")
    dense = lambda w, s: lif(s @ w)[0]  # noqa: E731
    readout = lambda w, s: s.mean(0) @ w  # noqa: E731
    ws = [normal((40, 32)), normal((32, 16)), normal((16, 3))]
    x = jax.ShapeDtypeStruct((T, B, 40), jnp.float32)
    small = 64  # a few scalars per LIF (1/tau, thresholds, the surrogate's alpha)
    per = memory.residual_bytes_per_layer([dense, dense, readout], ws, x)
    # the reference LIF keeps two float32 arrays per step; layer 2 also its input spikes;
    # the readout keeps the mean of its input (a new array)
    assert per[0] == pytest.approx(8 * T * B * 32, abs=small)
    assert per[1] == pytest.approx(8 * T * B * 16 + 4 * T * B * 32, abs=small)
    assert per[2] == 4 * B * 16

    def chain(w0, w1, w2, x):
        return readout(w2, dense(w1, dense(w0, x)))

    whole = memory.residual_bytes(chain, *ws, x, exclude_inputs=True)
    assert whole == pytest.approx(sum(per), abs=3 * small)
    bits = memory.checkpoint(dense, spike_argnums=1)
    per_bits = memory.residual_bytes_per_layer([dense, bits, readout], ws, x)
    assert per_bits[1] == bits_bytes((T, B, 32))
    with pytest.raises(ValueError, match="differ in length"):
        memory.residual_bytes_per_layer([dense], ws, x)


# -- brainstate and Flax NNX (Python >= 3.12): the docs' modules, as written -----------------
DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "memory.md"
WRAPPER = "memory.checkpoint(self.forward, spike_argnums=0)(spikes)"


def doc_module(name, wrapped=True):
    """The ``SpikingDense`` class of the docs' block ``name``; without ``wrapped``, the same
    code with the wrapper line's call replaced by the plain ``self.forward(spikes)``."""
    block = re.search(rf"<!-- {name}:start -->.*?```python\n(.*?)```.*?<!-- {name}:end -->",
                      DOC.read_text(encoding="utf-8"), re.S)
    assert block, f"docs/memory.md lost its {name} block"
    code = block.group(1)
    assert code.count(WRAPPER) == 1, "the docs' wrapper line changed"
    namespace: dict = {}
    exec(code if wrapped else code.replace(WRAPPER, "self.forward(spikes)"), namespace)
    return namespace["SpikingDense"]


def _needs(module):
    """``module``; skipped where missing (it is in the test extra for Python >= 3.12 only),
    unless SPIKEFUSE_REQUIRE_BRAINTOOLS=1 (CI on 3.12), where missing is a failure."""
    if os.environ.get("SPIKEFUSE_REQUIRE_BRAINTOOLS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is installed for Python >= 3.12 only")


def test_brainstate_module_of_the_docs():
    bst = _needs("brainstate")
    s, ct = spikes((T, B, N_IN)), normal((T, B, N_OUT))

    def grads(wrapped):
        bst.random.seed(1)
        module = doc_module("memory-brainstate", wrapped)(N_IN, N_OUT)
        loss = bst.transform.grad(lambda s: (module(s) * ct).sum(),
                                  grad_states=module.states(bst.ParamState), return_value=True)
        return bst.transform.jit(loss)(s)

    got, want = grads(True), grads(False)
    assert_bitwise(got, want)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(want[0]))


def test_flax_nnx_module_of_the_docs():
    nnx = _needs("flax.nnx")
    s, ct = spikes((T, B, N_IN)), normal((T, B, N_OUT))

    def grads(wrapped):
        module = doc_module("memory-nnx", wrapped)(N_IN, N_OUT, rngs=nnx.Rngs(0))
        return nnx.jit(lambda m: nnx.value_and_grad(lambda m: (m(s) * ct).sum())(m))(module)

    got, want = grads(True), grads(False)
    assert_bitwise(got, want)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(want[1]))
    graph, state = nnx.split(doc_module("memory-nnx")(N_IN, N_OUT, rngs=nnx.Rngs(0)))
    kept = memory.residuals(lambda st: (nnx.merge(graph, st)(s) * ct).sum(), state)
    # new arrays: the spikes as bits, and ct (the loss's own constant); the parameters are
    # the state, argument 0
    assert sorted((r.dtype, r.nbytes) for r in kept if r.argnum is None) == sorted(
        [("uint8", bits_bytes(s.shape)), ("float32", ct.nbytes)])
