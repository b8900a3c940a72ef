"""``spikefuse.memory`` on 8 simulated devices: sharded equals unsharded, per shard.

Two layers — ``spike_matmul`` into a LIF (reference), then ``memory.checkpoint`` of
(matmul -> fused LIF, interpreted) on the first layer's spikes — differentiated on ``[T, batch, n]``
inputs sharded over the batch (1-D meshes, Auto and Explicit axes) and over the batch and
the neurons (a 2-D Explicit mesh, where the bits are packed along the one axis not sharded,
time). Forward values and per-element gradients equal the unsharded run's; the weights'
gradients, summed across devices, to float32 rounding; and the compiled program holds no
gather that plain JAX's program for the same function does not. The same checks for two
layers each under ``memory.scan`` over chunks of time, against ``lax.scan`` over the same
chunks (batch sharded, Auto and Explicit axes).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spikefuse import memory
import spikefuse.neurons as sn

from test_per_shard import CFG, GATHERS, assert_same, collectives, make_mesh

T, B, N_IN, N_HID, N_OUT = 5, 16, 24, 16, 8
RNG = np.random.default_rng(3)
S = jnp.asarray(RNG.random((T, B, N_IN)) < 0.3, jnp.float32)
W1 = jnp.asarray(RNG.normal(size=(N_IN, N_HID)), jnp.float32)
W2 = jnp.asarray(RNG.normal(size=(N_HID, N_OUT)), jnp.float32)
CT = jnp.asarray(RNG.normal(size=(T, B, N_OUT)), jnp.float32)
LAYOUTS = {  # mesh, axis types, spikes layout [T, batch, n]
    "1d-auto": ("1d", "auto", P(None, "d")),
    "1d-explicit": ("1d", "explicit", P(None, "d")),
    "2d-explicit": ("2d", "explicit", P(None, "a", "b")),
}


def two_layers(s, w1, w2, ct, bits=True):
    matmul = memory.spike_matmul if bits else jnp.matmul
    h = sn.lif(matmul(s, w1), tau=2.0, backend="reference")[0]

    def block(w, s):
        return sn.lif(s @ w, tau=2.0, backend="interpret", config=CFG)[0]

    out = memory.checkpoint(block, spike_argnums=1)(w2, h) if bits else block(w2, h)
    return (out * ct).sum()


def value_and_grads(s, w1, w2, ct, bits=True):
    return jax.value_and_grad(two_layers, argnums=(0, 1, 2))(s, w1, w2, ct, bits)


def check_per_shard(f, layout, plain_how, ds_how):
    """``f(s, w1, w2, ct, ours)`` (value and gradients; ``ours=False``: plain JAX's form)
    on inputs placed by ``layout``: equal to plain JAX's sharded program (``plain_how``,
    `assert_same`) and to the unsharded run — the loss and the weights' gradients summed
    across devices in another order, the spikes' gradient ``ds_how`` — with no gather
    beyond plain JAX's, and the spikes' gradient sharded as the spikes."""
    mesh_name, types, spec = LAYOUTS[layout]
    mesh = make_mesh(mesh_name, types)
    f = jax.jit(f, static_argnums=4)
    want = f(S, W1, W2, CT, False)
    placed = [jax.device_put(a, NamedSharding(mesh, sp))
              for a, sp in ((S, spec), (W1, P()), (W2, P()), (CT, spec))]
    with jax.set_mesh(mesh):
        ours, theirs = (f.lower(*placed, flag).compile() for flag in (True, False))
        got, plain = ours(*placed), theirs(*placed)
        found, baseline = collectives(ours.as_text()), collectives(theirs.as_text())
    assert float(jnp.abs(want[1][1]).max()) > 0  # both layers get gradients
    for g, p in zip(jax.tree.leaves(got), jax.tree.leaves(plain)):
        assert_same(g, p, plain_how)
    loss, (ds, dw1, dw2) = got
    assert_same(loss, want[0], "sum")
    assert_same(ds, want[1][0], ds_how)
    assert_same(dw1, want[1][1], "sum")
    assert_same(dw2, want[1][2], "sum")
    extra = set(found) - set(baseline)
    assert not extra & set(GATHERS), f"gathers beyond plain JAX's: {found} vs {baseline}"
    assert tuple(ds.sharding.spec)[:len(spec)] == tuple(spec)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bits_and_checkpoint_per_shard(layout):
    # sharded: equal to plain JAX's sharded program, bit for bit; to the unsharded run, on
    # the 2-D mesh the spikes' gradient too is summed in another order (its contraction is
    # split over devices)
    check_per_shard(value_and_grads, layout, "exact",
                    "ulp" if LAYOUTS[layout][0] == "1d" else "close")


def chunked_layers(s, w1, w2, ct, chunked=True):
    """Two Dense -> LIF layers, each over chunks of time: under ``memory.scan`` (the spikes
    as bits), or ``lax.scan`` over the same chunks (plain JAX)."""
    def layer(w, backend):
        def chunk(v, s_chunk):
            out, v = sn.lif(s_chunk @ w, v, tau=2.0, backend=backend, config=CFG)
            return v, out
        return chunk

    def run(f, init, xs):
        if chunked:
            return memory.scan(f, init, xs, chunks=5)[1]
        return jax.lax.scan(f, init, xs.reshape(5, T // 5, *xs.shape[1:]))[1].reshape(
            T, *xs.shape[1:-1], -1)

    def zeros(x, n):  # [batch, n] zeros, sharded as x's batch (on Explicit axes too)
        return jnp.zeros_like(x[0, :, :n])

    h = run(layer(w1, "reference"), zeros(s, N_HID), s)
    out = run(layer(w2, "interpret"), zeros(h, N_OUT), h)
    return (out * ct).sum()


@pytest.mark.parametrize("layout", ["1d-auto", "1d-explicit"])
def test_scan_per_shard(layout):
    """memory.scan over a batch-sharded spike train: equal to lax.scan over the same chunks
    (sharded and not), and no gather beyond plain JAX's."""
    check_per_shard(jax.value_and_grad(chunked_layers, argnums=(0, 1, 2)), layout, "close",
                    "close")
