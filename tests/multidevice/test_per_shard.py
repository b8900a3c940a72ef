"""Sharded inputs on 8 simulated CPU devices: the kernels run per shard.

For the elementwise spike (``fire``) and the multi-step neurons (``LIF``/``IF`` and a
user's two-state step through the engine, ``multistep``), in
Pallas interpret mode (the GPU kernels; the TPU kernels in `test_tpu_kernels_per_shard`),
on 1-D and 2-D meshes with Auto and Explicit axes:

* sharded results equal the unsharded ones (jit on one device): spikes, membranes and
  per-element gradients bit for bit; gradients of shared parameters (summed across
  devices, so in another order) to float32 rounding;
* the compiled HLO holds no all-gather, all-to-all or collective-permute (an all-reduce,
  for the gradients of shared parameters, is expected);
* the output keeps the input's sharding.

Also: jit with in_shardings/out_shardings, a user's shard_map, vmap and forward mode of
sharded calls, a time-sharded x_seq (a ValueError on Explicit axes, a documented
all-gather on Auto axes), and the cuda lowering of the Pallas path inside a shard_map.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import spikefuse
import spikefuse.neurons as sn
from spikefuse import surrogate as sg
from spikefuse.kernels import mgpu_elementwise, mgpu_scan, scan, tpu_elementwise, tpu_scan

import lowering

BACKEND = "interpret"
GATHERS = ("all-gather", "all-to-all", "collective-permute")
# Small kernels: interpret mode compiles every block; several chunks and blocks per shard.
CFG = scan.ScanConfig(block=8, chunk=3, num_warps=1)
MESHES = {"1d": ((8,), ("d",)), "2d": ((2, 4), ("a", "b"))}
# [batch, features] layouts per mesh; neurons get a leading time axis.
LAYOUTS = {"1d": P("d"), "2d": P("a", "b")}
AXIS_TYPES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}


def make_mesh(name, types):
    shape, names = MESHES[name]
    return jax.make_mesh(shape, names, axis_types=(AXIS_TYPES[types],) * len(shape))


def collectives(compiled_text):
    return sorted(set(re.findall(
        r"\b(all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)\b",
        compiled_text)))


def assert_no_gathers(jitted, *args):
    found = collectives(jitted.lower(*args).compile().as_text())
    assert not set(found) & set(GATHERS), f"collectives in the HLO: {found}"
    return found


def assert_same(got, want, how):
    """``how``: "exact" (forward values), "ulp" (per-element gradients: the same formula,
    but XLA may vectorise it differently for a shard's shape than for the whole array),
    "sum" (gradients of shared parameters, summed across devices in another order) or
    "close" (1e-5 relative to the largest magnitude)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    if how == "exact":
        np.testing.assert_array_equal(got, want)
    elif how == "ulp":
        np.testing.assert_array_max_ulp(got, want, maxulp=4)
    elif how == "close":  # 1e-5 of the largest magnitude, as the kernel-vs-reference tests
        scale = float(np.max(np.abs(want), initial=0.0))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


def spec_of(array):
    spec = tuple(array.sharding.spec)
    return spec + (None,) * (array.ndim - len(spec))


def run_sharded(fn, mesh, args, shardings, check_hlo=True):
    """``jit(fn)`` on ``args`` placed with ``shardings``, inside the mesh, and the
    collectives of its HLO (checked to hold no gathers unless ``check_hlo`` is False)."""
    placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, shardings)]
    with jax.set_mesh(mesh):
        jitted = jax.jit(fn)
        out = jitted(*placed)
        if check_hlo:
            return out, assert_no_gathers(jitted, *placed)
        return out, collectives(jitted.lower(*placed).compile().as_text())


# -- elementwise -------------------------------------------------------------------------------
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(16, 12)), jnp.float32)        # ragged per shard (24 or 12)
THR = jnp.asarray(RNG.normal(size=(12,)) * 0.2, jnp.float32)   # per feature, replicated
ALPHA = jnp.asarray(RNG.uniform(1.0, 4.0, size=(16, 12)), jnp.float32)  # per element


# Cotangent weights: d loss/dx = W * g'(x - thr) is then the kernel's own output, so it can
# be compared bit for bit (XLA's CPU cos, say, differs by an ulp between loop shapes).
W = jnp.asarray(RNG.normal(size=X.shape), jnp.float32)


def fire_and_grads(x, thr, alpha, w=W, backend=BACKEND):
    surrogate = sg.Sigmoid(alpha=alpha)

    def loss(x, thr):
        return (spikefuse.fire(x, thr, surrogate, backend=backend) * w).sum()

    return spikefuse.fire(x, thr, surrogate, backend=backend), jax.grad(loss, (0, 1))(x, thr)


@pytest.mark.parametrize("types", AXIS_TYPES)
@pytest.mark.parametrize("mesh_name", MESHES)
def test_fire_per_shard(mesh_name, types):
    mesh = make_mesh(mesh_name, types)
    spec = LAYOUTS[mesh_name]
    want_s, (want_gx, want_gt) = jax.jit(fire_and_grads)(X, THR, ALPHA)
    (s, (gx, gt)), found = run_sharded(fire_and_grads, mesh, (X, THR, ALPHA), (spec, P(), spec))
    assert_same(s, want_s, "exact")
    assert_same(gx, want_gx, "ulp")
    assert_same(gt, want_gt, "sum")  # summed over devices
    assert "all-reduce" in found  # the threshold's gradient
    assert spec_of(s) == spec_of(jax.device_put(X, NamedSharding(mesh, spec)))


@pytest.mark.parametrize("types", AXIS_TYPES)
def test_fire_forward_mode(types):
    mesh = make_mesh("2d", types)

    def f(x, thr, alpha):
        s = lambda x: spikefuse.fire(x, thr, sg.Sigmoid(alpha=alpha), backend=BACKEND)
        return jax.jvp(s, (x,), (jnp.sin(x),))

    want = jax.jit(f)(X, THR, ALPHA)
    got, _ = run_sharded(f, mesh, (X, THR, ALPHA), (P("a", "b"), P(), P("a", "b")))
    for g, w, how in zip(got, want, ("exact", "ulp")):
        assert_same(g, w, how)


@pytest.mark.parametrize("types,spec", [("auto", P("a", "b")), ("explicit", P(None, "b"))])
def test_fire_vmap(types, spec):
    # vmap over x's first axis. On Auto axes it may be sharded; on Explicit axes jax's
    # shard_map batching gathers a sharded vmapped axis (docs/scaling.md), so it is not sharded here.
    mesh = make_mesh("2d", types)

    def f(x, thr, w):
        def one(row, t, w_row):
            loss = lambda row: (spikefuse.fire(row, t, sg.Arctan(), backend=BACKEND) * w_row).sum()
            return spikefuse.fire(row, t, sg.Arctan(), backend=BACKEND), jax.grad(loss)(row)

        return jax.vmap(one, in_axes=(0, None, 0))(x, thr, w)

    want = jax.jit(f)(X, THR, W)
    got, _ = run_sharded(f, mesh, (X, THR, W), (spec, P(), spec))
    for g, w, how in zip(got, want, ("exact", "ulp")):
        assert_same(g, w, how)


def test_fire_jit_in_and_out_shardings():
    mesh = make_mesh("1d", "auto")
    x_sharding = NamedSharding(mesh, P("d"))
    jitted = jax.jit(fire_and_grads,
                     in_shardings=(x_sharding, NamedSharding(mesh, P()), x_sharding),
                     out_shardings=(x_sharding, (x_sharding, NamedSharding(mesh, P()))))
    want_s, (want_gx, want_gt) = jax.jit(fire_and_grads)(X, THR, ALPHA)
    s, (gx, gt) = jitted(X, THR, ALPHA)  # uncommitted arrays: jit places them
    assert_no_gathers(jitted, X, THR, ALPHA)
    assert_same(s, want_s, "exact")
    assert_same(gx, want_gx, "ulp")
    assert_same(gt, want_gt, "sum")
    assert s.sharding.is_equivalent_to(x_sharding, s.ndim)


def test_fire_threshold_sharded_like_x():
    # An operand of x's shape and layout is used shard by shard, with no resharding.
    mesh = make_mesh("2d", "explicit")
    thr = jnp.asarray(RNG.normal(size=X.shape) * 0.2, jnp.float32)

    def f(x, thr):
        return spikefuse.fire(x, thr, sg.GaussianGrad(), backend=BACKEND)

    got, found = run_sharded(f, mesh, (X, thr), (P("a", "b"), P("a", "b")))
    assert_same(got, jax.jit(f)(X, thr), "exact")
    assert found == []


# -- neurons ------------------------------------------------------------------------------------
T = 7  # two full chunks of 3 and a ragged one
XS = jnp.asarray(RNG.normal(size=(T, 16, 12)) + 0.6, jnp.float32)
TAU = jnp.asarray(RNG.uniform(1.5, 4.0, size=(12,)), jnp.float32)  # per feature, replicated
V0 = jnp.asarray(RNG.normal(size=(16, 12)) * 0.3, jnp.float32)


def lif_and_grads(x_seq, tau, v0, backend=BACKEND, config=CFG):
    def run(x_seq, tau, v0):
        return sn.lif(x_seq, v0, tau=tau, backend=backend, config=config, return_v_seq=True)

    def loss(x_seq, tau, v0):
        s, v_T, v_seq = run(x_seq, tau, v0)
        w = jnp.arange(1, T + 1, dtype=s.dtype)[:, None, None]
        return (s * w).sum() + (v_T ** 2).sum() + (v_seq * 0.1).sum()

    return run(x_seq, tau, v0), jax.grad(loss, (0, 1, 2))(x_seq, tau, v0)


@pytest.mark.parametrize("types", AXIS_TYPES)
@pytest.mark.parametrize("mesh_name", MESHES)
def test_lif_per_shard(mesh_name, types):
    mesh = make_mesh(mesh_name, types)
    spec = LAYOUTS[mesh_name]
    seq = P(None, *spec)
    want_out, want_grads = jax.jit(lif_and_grads)(XS, TAU, V0)
    (out, grads), found = run_sharded(lif_and_grads, mesh, (XS, TAU, V0), (seq, P(), spec))
    for g, w in zip(out, want_out):  # spikes, v_T, v_seq
        assert_same(g, w, "exact")
    assert_same(grads[0], want_grads[0], "ulp")  # per element
    assert_same(grads[2], want_grads[2], "ulp")  # per neuron
    assert_same(grads[1], want_grads[1], "sum")  # tau: summed over devices
    assert "all-reduce" in found
    assert spec_of(out[0]) == spec_of(jax.device_put(XS, NamedSharding(mesh, seq)))


def two_state_step(state, x, p, fire):
    """A user's 2-state step through the engine (an adaptive threshold)."""
    v, a = state
    h = v * p["decay"] + x
    theta = 1.0 + p["beta"] * a
    s = fire(h, theta)
    return s, (h - theta * s, 0.9 * a + 0.1 * s)


def engine_and_grads(x_seq, beta, v0, backend=BACKEND):
    def run(x_seq, beta, v0):
        return sn.multistep(two_state_step, x_seq, (v0, 0.0), {"decay": 0.8, "beta": beta},
                            backend=backend, return_states=True)

    def loss(x_seq, beta, v0):
        s, (v, a), (v_seq, a_seq) = run(x_seq, beta, v0)
        w = jnp.arange(1, T + 1, dtype=s.dtype)[:, None, None]
        return (s * w).sum() + (v ** 2).sum() + a.sum() + (v_seq * 0.1).sum() + a_seq.sum()

    return run(x_seq, beta, v0), jax.grad(loss, (0, 1, 2))(x_seq, beta, v0)


@pytest.mark.parametrize("types", AXIS_TYPES)
@pytest.mark.parametrize("mesh_name", MESHES)
def test_engine_two_state_per_shard(mesh_name, types, monkeypatch):
    monkeypatch.setattr(scan, "default_config", lambda *a: CFG)  # small interpret kernels
    mesh = make_mesh(mesh_name, types)
    spec = LAYOUTS[mesh_name]
    beta = TAU / 2  # per feature, replicated
    want_out, want_grads = jax.jit(engine_and_grads)(XS, beta, V0)
    (out, grads), found = run_sharded(engine_and_grads, mesh, (XS, beta, V0),
                                      (P(None, *spec), P(), spec))
    assert_same(out[0], want_out[0], "exact")  # spikes
    # States and gradients to float32 rounding: interpreted, the kernel is XLA CPU code,
    # which may contract its multiply-adds into fused ones differently for a shard's shape
    # (seen on jax 0.12, 2x4 Auto mesh: 2e-7 in membranes near 0, 87 ulp in dx).
    for g, w in zip(jax.tree.leaves((out[1:], grads)), jax.tree.leaves((want_out[1:],
                                                                       want_grads))):
        assert_same(g, w, "close")
    assert "all-reduce" in found


def _kernel_sizes(monkeypatch, elementwise_module, scan_module):
    """A list that receives the size of the main operand of every kernel call of a family
    (its elementwise spike and its scan kernels). Interpreted, a kernel is plain XLA code
    that the partitioner could split by itself, so "no gathers" alone does not show that
    each kernel runs on its shard; the sizes it was built for do."""
    sizes = []

    def spy(real, main):
        def call(*a, **k):
            sizes.append(main(a).size)
            return real(*a, **k)
        return call

    for mod, name, main in [(elementwise_module, "heaviside", lambda a: a[0]),
                            (elementwise_module, "grad_mul", lambda a: a[0]),
                            (scan_module, "scan_forward", lambda a: a[1][0]),
                            (scan_module, "scan_backward", lambda a: a[1][0])]:
        monkeypatch.setattr(mod, name, spy(getattr(mod, name), main))
    return sizes


# The TPU kernels: blocks of (16, 128) and chunks of 3 (each shard is one block here; the
# blocks themselves are tested in test_tpu_scan.py and test_neurons.py).
TPU_CFG = tpu_scan.TpuScanConfig(chunk=3, block_rows=16, block_cols=128)


@pytest.mark.parametrize("mesh_name, types", [("1d", "explicit"), ("2d", "auto")])
def test_tpu_kernels_per_shard(mesh_name, types, monkeypatch):
    """backend="interpret_tpu" (the TPU kernels, interpreted) per shard: fire, LIF and a
    user's two-state step give the unsharded results, with no gathers in the program."""
    monkeypatch.setattr(tpu_scan, "default_config", lambda *a: TPU_CFG)  # multistep's
    sizes = _kernel_sizes(monkeypatch, tpu_elementwise, tpu_scan)
    mesh = make_mesh(mesh_name, types)
    spec = LAYOUTS[mesh_name]

    def f(x, thr, alpha, x_seq, tau, v0):
        return (fire_and_grads(x, thr, alpha, backend="interpret_tpu"),
                lif_and_grads(x_seq, tau, v0, backend="interpret_tpu", config=TPU_CFG),
                engine_and_grads(x_seq, tau / 2, v0, backend="interpret_tpu"))

    args = (X, THR, ALPHA, XS, TAU, V0)
    want = jax.jit(f)(*args)
    sizes.clear()
    got, found = run_sharded(f, mesh, args, (spec, P(), spec, P(None, *spec), P(), spec))
    # Kernels built for one device's block: 1/8 of fire's x and of x_seq. (On Auto axes
    # custom_partitioning also traces them at the global shape, for its jaxpr; what each
    # device compiles is the call its partition callback builds, on the shard.)
    shard_sizes = {X.size // 8, XS.size // 8}
    assert shard_sizes <= set(sizes), sizes
    if types == "explicit":
        assert set(sizes) == shard_sizes, sizes
    (s, (gx, gt)), (lif_out, lif_grads), (eng_out, eng_grads) = got
    (ws, (wgx, wgt)), (wlif_out, wlif_grads), (weng_out, weng_grads) = want
    for g, w in zip((s, *lif_out, eng_out[0]), (ws, *wlif_out, weng_out[0])):
        assert_same(g, w, "exact")  # spikes, v_T, v_seq; the engine's spikes
    assert_same(gx, wgx, "ulp")
    assert_same(gt, wgt, "sum")
    # The neurons' states and gradients to float32 rounding, as in
    # test_engine_two_state_per_shard (XLA CPU contracts the interpreted kernels'
    # multiply-adds differently per shard shape: 74 ulp in LIF's dx on jax 0.12, 2x4 Auto).
    for g, w in zip(jax.tree.leaves((lif_grads, eng_out[1:], eng_grads)),
                    jax.tree.leaves((wlif_grads, weng_out[1:], weng_grads))):
        assert_same(g, w, "close")
    assert "all-reduce" in found  # the gradients of the shared threshold, tau and beta
    assert spec_of(s) == spec_of(jax.device_put(X, NamedSharding(mesh, spec)))


# The Mosaic GPU kernels: CTAs of 128 (each shard is one block, padded) and chunks of 3.
MGPU_CFG = mgpu_scan.MgpuScanConfig(chunk=3, block=128)


@lowering.mgpu_full
@pytest.mark.parametrize("mesh_name, types", [("1d", "explicit"), ("2d", "auto")])
def test_mgpu_kernels_per_shard(mesh_name, types, monkeypatch):
    """backend="interpret_mgpu" (the Mosaic GPU kernels, interpreted) per shard, through a
    shard_map (Explicit axes) and custom_partitioning (Auto axes): fire and a user's
    two-state step give the unsharded results, each kernel built for one device's block."""
    monkeypatch.setattr(mgpu_scan, "default_config", lambda *a: MGPU_CFG)  # multistep's
    sizes = _kernel_sizes(monkeypatch, mgpu_elementwise, mgpu_scan)
    mesh = make_mesh(mesh_name, types)
    spec = LAYOUTS[mesh_name]

    def f(x, thr, alpha, x_seq, tau, v0):
        return (fire_and_grads(x, thr, alpha, backend="interpret_mgpu"),
                engine_and_grads(x_seq, tau / 2, v0, backend="interpret_mgpu"))

    args = (X, THR, ALPHA, XS, TAU, V0)
    want = jax.jit(f)(*args)
    sizes.clear()
    got, found = run_sharded(f, mesh, args, (spec, P(), spec, P(None, *spec), P(), spec))
    shard_sizes = {X.size // 8, XS.size // 8}
    assert shard_sizes <= set(sizes), sizes
    if types == "explicit":
        assert set(sizes) == shard_sizes, sizes
    (s, (gx, gt)), (eng_out, eng_grads) = got
    (ws, (wgx, wgt)), (weng_out, weng_grads) = want
    for g, w in zip((s, eng_out[0]), (ws, weng_out[0])):
        assert_same(g, w, "exact")  # spikes
    assert_same(gx, wgx, "ulp")
    assert_same(gt, wgt, "sum")
    for g, w in zip(jax.tree.leaves((eng_out[1:], eng_grads)),
                    jax.tree.leaves((weng_out[1:], weng_grads))):
        assert_same(g, w, "close")
    assert "all-reduce" in found


@pytest.mark.parametrize("types", AXIS_TYPES)
def test_if_per_shard_scalar_params(types):
    mesh = make_mesh("1d", types)

    def f(x_seq):
        run = functools.partial(sn.integrate_fire, v_threshold=0.8, v_reset=None,
                                surrogate=sg.Arctan(alpha=3.0), backend=BACKEND, config=CFG)
        loss = lambda x_seq: sum(a.sum() for a in run(x_seq))
        return run(x_seq), jax.grad(loss)(x_seq)

    want = jax.jit(f)(XS)
    got, _ = run_sharded(f, mesh, (XS,), (P(None, "d"),))
    for g, w, how in zip(jax.tree.leaves(got), jax.tree.leaves(want), ("exact", "exact", "ulp")):
        assert_same(g, w, how)


def test_lif_jit_in_and_out_shardings():
    mesh = make_mesh("2d", "auto")
    seq = NamedSharding(mesh, P(None, "a", "b"))
    cells = NamedSharding(mesh, P("a", "b"))
    rep = NamedSharding(mesh, P())
    # tau is per feature and features are split over "b": its gradient is asked for split
    # the same way (asking for it replicated makes XLA all-gather those 12 numbers).
    features = NamedSharding(mesh, P("b"))
    jitted = jax.jit(lif_and_grads, in_shardings=(seq, rep, cells),
                     out_shardings=((seq, cells, seq), (seq, features, cells)))
    want_out, want_grads = jax.jit(lif_and_grads)(XS, TAU, V0)
    out, grads = jitted(XS, TAU, V0)
    assert_no_gathers(jitted, XS, TAU, V0)
    for g, w in zip(out, want_out):
        assert_same(g, w, "exact")
    assert_same(grads[0], want_grads[0], "ulp")
    assert_same(grads[1], want_grads[1], "sum")
    assert_same(grads[2], want_grads[2], "ulp")


@pytest.mark.parametrize("types", AXIS_TYPES)
def test_lif_vmap_over_sharded_input(types):
    mesh = make_mesh("1d", types)

    def f(x_seq, tau):  # vmap over a leading "model copy" axis; tau per copy
        return jax.vmap(lambda x, t: sn.lif(x, tau=t, backend=BACKEND, config=CFG))(x_seq, tau)

    x = XS.reshape(T, 2, 8, 12).transpose(1, 0, 2, 3)  # [2, T, 8, 12]
    tau = jnp.asarray([2.0, 3.0], jnp.float32)
    want = jax.jit(f)(x, tau)
    got, _ = run_sharded(f, mesh, (x, tau), (P(None, None, "d"), P()))
    for g, w in zip(got, want):
        assert_same(g, w, "exact")


def test_time_sharded_x_seq_explicit_raises():
    mesh = make_mesh("1d", "explicit")
    x = jax.device_put(jnp.concatenate([XS, XS[:1]]), NamedSharding(mesh, P("d")))  # T = 8
    with jax.set_mesh(mesh):
        with pytest.raises(ValueError, match=r"x_seq: the input is sharded along dim\(s\) \[0\]"):
            jax.jit(lambda x: sn.lif(x, backend=BACKEND, config=CFG))(x)
        with pytest.raises(ValueError, match=r"x_seq: .*sharded along dim\(s\) \[0\]"):
            sn.lif(x, backend="reference")  # every backend: T is a sequential loop


def test_time_sharded_x_seq_auto_is_gathered_along_time():
    # Documented: on Auto axes the partitioner makes x_seq whole along time (an all-gather)
    # and the kernel still runs per shard over the other dims.
    mesh = make_mesh("1d", "auto")
    x = jnp.concatenate([XS, XS[:1]])  # T = 8, divisible by the mesh
    f = jax.jit(lambda x: sn.lif(x, backend=BACKEND, config=CFG),
                in_shardings=NamedSharding(mesh, P("d")))
    want = jax.jit(lambda x: sn.lif(x, backend=BACKEND, config=CFG))(x)
    for g, w in zip(f(x), want):
        assert_same(g, w, "exact")
    assert "all-gather" in collectives(f.lower(x).compile().as_text())


@pytest.mark.parametrize("types", AXIS_TYPES)
def test_reference_backend_sharded(types):
    # The reference is plain jnp (XLA partitions it): it must accept the same layouts.
    mesh = make_mesh("2d", types)

    def f(x, thr, x_seq, tau, v0):
        fire = lambda x, thr: (spikefuse.fire(x, thr, backend="reference") * W).sum()
        run = lambda x_seq, tau, v0: sn.lif(x_seq, v0, tau=tau, backend="reference")
        lif_loss = lambda *a: sum(o.sum() for o in run(*a))
        return (spikefuse.fire(x, thr, backend="reference"), jax.grad(fire, (0, 1))(x, thr),
                run(x_seq, tau, v0), jax.grad(lif_loss, (0, 1, 2))(x_seq, tau, v0))

    args = (X, THR, XS, TAU, V0)
    want = jax.jit(f)(*args)
    # Not checked for gathers: that is XLA's partitioning of jnp, not a kernel of ours (with
    # features split, it may all-gather the per-feature gradients of thr and tau).
    got, _ = run_sharded(f, mesh, args, (P("a", "b"), P(), P(None, "a", "b"), P(), P("a", "b")),
                         check_hlo=False)
    (s, grads, lif_out, lif_grads), (ws, wgrads, wlif_out, wlif_grads) = got, want
    for g, w in zip((s, *lif_out), (ws, *wlif_out)):
        assert_same(g, w, "exact")
    for g, w in zip((*grads, *lif_grads), (*wgrads, *wlif_grads)):  # XLA fuses BPTT per layout
        assert_same(g, w, "sum")


# -- inside a user's shard_map ------------------------------------------------------------------
def _in_shard_map(body, mesh, in_specs, out_specs, check_vma):
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                                 check_vma=check_vma))


def test_fire_and_lif_inside_user_shard_map():
    mesh = make_mesh("1d", "auto")

    def body(x, thr, alpha, w, x_seq, tau, v0):
        s, (gx, gt) = fire_and_grads(x, thr, alpha, w)
        (spikes, v_T, v_seq), (dx, dtau, dv0) = lif_and_grads(x_seq, tau, v0)
        return s, gx, jax.lax.psum(gt, "d"), spikes, v_T, dx, jax.lax.psum(dtau, "d"), dv0

    cells, seq = P("d"), P(None, "d")
    mapped = _in_shard_map(body, mesh, (cells, P(), cells, cells, seq, P(), cells),
                           (cells, cells, P(), seq, cells, seq, P(), cells), check_vma=False)
    got = mapped(X, THR, ALPHA, W, XS, TAU, V0)
    assert_no_gathers(mapped, X, THR, ALPHA, W, XS, TAU, V0)
    (ws, (wgx, wgt)) = jax.jit(fire_and_grads)(X, THR, ALPHA)
    (wsp, wv, _), (wdx, wdtau, wdv0) = jax.jit(lif_and_grads)(XS, TAU, V0)
    for g, w, how in zip(got, (ws, wgx, wgt, wsp, wv, wdx, wdtau, wdv0),
                         ("exact", "ulp", "sum", "exact", "exact", "ulp", "sum", "ulp")):
        assert_same(g, w, how)


def test_shard_map_check_vma_reference_and_interpret():
    mesh = make_mesh("1d", "auto")

    def body(backend):
        def f(x, thr):
            loss = lambda x, thr: spikefuse.fire(x, thr, backend=backend).sum()
            return spikefuse.fire(x, thr, backend=backend), jax.grad(loss, 1)(x, thr)
        return f

    specs = ((P("d"), P()), (P("d"), P()))
    # The reference (plain jnp) types its varying axes; psum-free gradient of a replicated
    # threshold comes back summed over devices.
    got = _in_shard_map(body("reference"), mesh, *specs, check_vma=True)(X, THR)
    want = jax.jit(body("reference"))(X, THR)
    assert_same(got[0], want[0], "exact")
    assert_same(got[1], want[1], "sum")
    # jax's Pallas interpreter cannot track varying axes: a clear error, not a deep one.
    with pytest.raises(ValueError, match="check_vma=False"):
        _in_shard_map(body("interpret"), mesh, *specs, check_vma=True)(X, THR)
    with pytest.raises(ValueError, match="check_vma=False"):
        _in_shard_map(lambda x: sn.lif(x, backend="interpret", config=CFG), mesh,
                      (P(None, "d"),), (P(None, "d"), P("d")), check_vma=True)(XS)


def _pallas_body(x, thr, x_seq, backend="pallas"):
    """fire's gradient and LIF's (forward and backward) on "pallas", inside a shard_map."""
    loss = lambda x, thr: (spikefuse.fire(x, thr, backend=backend) * x).sum()
    gx, gt = jax.grad(loss, (0, 1))(x, thr)
    lif_loss = lambda x_seq: sn.lif(x_seq, backend=backend)[0].sum()
    return gx, jax.lax.psum(gt, "d"), jax.grad(lif_loss)(x_seq)


@pytest.mark.parametrize("backend, call", [("pallas", lowering.TRITON_CALL),
                                           ("pallas_mgpu", lowering.MGPU_CALL)])
@pytest.mark.parametrize("check_vma", [True, False])
def test_pallas_inside_shard_map_lowers_for_cuda(check_vma, backend, call):
    """The Triton ("pallas") and the Mosaic GPU ("pallas_mgpu") kernels lowered for cuda
    inside a shard_map: fire's gradient, LIF's forward and backward, with no gathers."""
    mesh, context = lowering.cuda_mesh((8,), ("d",))
    mapped = jax.shard_map(functools.partial(_pallas_body, backend=backend), mesh=mesh,
                           in_specs=(P("d"), P(), P(None, "d")),
                           out_specs=(P("d"), P(), P(None, "d")), check_vma=check_vma)
    text = lowering.export_for_cuda(
        mapped, *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (X, THR, XS)),
        context=context)
    assert text.count(call) >= 3  # fire's gradient; lif fwd and bwd
    other = lowering.MGPU_CALL if call == lowering.TRITON_CALL else lowering.TRITON_CALL
    assert other not in text
    assert not re.search(r"all_gather|all_to_all|collective_permute", text)


@pytest.mark.parametrize("check_vma", [True, False])
def test_pallas_inside_shard_map_lowers_for_tpu(check_vma):
    """The same body lowered for tpu: the Mosaic kernels (fire's gradient, LIF's forward and
    backward) run on each device's block, with no gathers."""
    mesh = jax.sharding.AbstractMesh((8,), ("d",), (AxisType.Auto,))
    mapped = jax.shard_map(_pallas_body, mesh=mesh, in_specs=(P("d"), P(), P(None, "d")),
                           out_specs=(P("d"), P(), P(None, "d")), check_vma=check_vma)
    with jax.sharding.use_abstract_mesh(mesh):
        text = lowering.export_for_tpu(
            mapped, *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (X, THR, XS)))
    assert text.count(lowering.TPU_CALL) >= 3 and lowering.TRITON_CALL not in text
    assert "spikefuse_tpu_scan_bwd" in text
    assert not re.search(r"all_gather|all_to_all|collective_permute", text)


@pytest.fixture
def gspmd():
    """XLA's older GSPMD partitioner instead of Shardy (the default), for this test only."""
    jax.config.update("jax_use_shardy_partitioner", False)
    try:
        yield
    finally:
        jax.config.update("jax_use_shardy_partitioner", True)


@pytest.mark.filterwarnings("ignore")
def test_auto_axes_under_gspmd(gspmd):
    # custom_partitioning's GSPMD callback (infer_sharding_from_operands), not its Shardy rule.
    test_fire_per_shard("2d", "auto")
    test_lif_per_shard("2d", "auto")
