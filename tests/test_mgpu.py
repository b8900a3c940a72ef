"""Tests for the Mosaic GPU kernel family, called directly: spikefuse.kernels.mgpu_elementwise,
mgpu_scan and mgpu_launch.

In Mosaic GPU interpret mode (``plgpu.InterpretGPUParams``: ``plgpu.kernel`` itself, run on
CPU with a GPU's memories and threads simulated) and under Pallas' generic interpreter (what
``backend="interpret_mgpu"`` runs), the kernels must equal independent references written
here or in the neighbouring tests: numpy float64 for the elementwise kernels, a ``lax.scan``
of the same step and its ``jax.vjp`` for the scan kernels (outputs and states exactly,
gradients to float32 rounding). Shapes span several 128-element blocks with a ragged tail
(the last CTA's block overlaps) and fewer than 128 elements (padded). Then: the cuda lowering
of every kernel for sm_80, sm_90 and sm_100 in f32 and bf16 (the architecture read back from
the exported kernels), the launch table, and the rewrite of what Mosaic GPU cannot lower
(`lowerable`). The family through the library ("interpret_mgpu") is in
test_spike_backends.py and test_engine.py; the choice of family in test_dispatch.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_kernels_elementwise import GRAD_FNS, TOLERANCES, _ref_grad_mul, _ref_heaviside
from test_tpu_scan import K, scan_reference, step

import lowering
import spikefuse
import spikefuse.neurons as sn
from spikefuse import surrogate as sg
from spikefuse.kernels import _compat, mgpu_launch, mgpu_scan
from spikefuse.kernels import mgpu_elementwise as me
from spikefuse.benchmark.neurons import example_step
from spikefuse.neurons import engine

GPU_INTERPRET = _compat.interpret_gpu_params()
full = lowering.mgpu_full  # the rest of the matrix: on the 3.12 row (see tests/lowering.py)
# Blocks of 256 (2 x 128): 1000 elements are 4 CTAs, the last overlapping; 130 fit one block
# of 128 (cut to the array) plus an overlapping one; 5 are padded to 128.
SMALL = me.MgpuElementwiseConfig(block_size=256)
MODES = [pytest.param(GPU_INTERPRET, id="mgpu-interpret"),
         pytest.param(True, id="pallas-interpret", marks=full)]


@pytest.fixture(autouse=True)
def _fresh_gpu_interpreter():
    """Mosaic GPU interpret mode keeps global state that an exception inside it leaves
    behind; clear it after every test."""
    yield
    _compat.reset_gpu_interpret_mode_state()


# -- elementwise --------------------------------------------------------------------------
@pytest.mark.parametrize("interpret", MODES)
@pytest.mark.parametrize("shape, dtype, thr_kind, name", [
    ((1000,), "float32", "scalar", "sigmoid"),
    pytest.param((3, 130), "bfloat16", "full", "triangle", marks=full),
    pytest.param((5,), "float32", "full", "atan2p", marks=full),
    pytest.param((2, 3, 7, 11), "float32", "scalar", "atan2p", marks=full),
])
def test_elementwise_kernels(interpret, shape, dtype, thr_kind, name):
    rng = np.random.default_rng(len(shape))
    dt = jnp.dtype(dtype)
    x = rng.normal(0, 1.5, shape)
    x.reshape(-1)[::7] = 0.25  # ties with the threshold: H = 1 there
    x = jnp.asarray(x, dt)
    thr = jnp.asarray(0.25 if thr_kind == "scalar" else rng.normal(0, 0.5, shape), dt)
    x = jnp.where(thr == 0.25, x, x)  # (thr per element: ties at random)
    t = jnp.asarray(rng.normal(size=shape), dt)
    grad_fn, grad64, ranges = GRAD_FNS[name]
    # The first parameter per element, the others scalars (both operand kinds).
    params = tuple(jnp.asarray(rng.uniform(lo, hi, shape if i == 0 else ()), jnp.float32)
                   for i, (lo, hi) in enumerate(ranges))
    h = me.heaviside(x, thr, interpret=interpret, config=SMALL)
    g = me.grad_mul(x, thr, t, params, grad_fn, interpret=interpret, config=SMALL)
    assert h.shape == g.shape == shape and h.dtype == g.dtype == dt
    np.testing.assert_array_equal(np.asarray(h), _ref_heaviside(np.asarray(x), np.asarray(thr)))
    rtol, atol = TOLERANCES[dtype]
    want = _ref_grad_mul(np.asarray(x), np.asarray(thr), np.asarray(t), params, grad64)
    np.testing.assert_allclose(np.asarray(g, np.float64), want, rtol=rtol, atol=atol)


def test_elementwise_special_values_and_empty():
    x = jnp.array([0.0, -0.0, jnp.inf, -jnp.inf, jnp.nan, 1e-30, -1e-30, 3e38], jnp.float32)
    h = me.heaviside(x, 0.0, interpret=GPU_INTERPRET)
    np.testing.assert_array_equal(np.asarray(h), [1, 1, 1, 0, 0, 1, 0, 1])  # NaN -> 0
    assert me.heaviside(jnp.zeros((0, 3)), 0.0, interpret=True).shape == (0, 3)
    with pytest.raises(TypeError, match="floating"):
        me.heaviside(jnp.arange(3), 0, interpret=True)
    with pytest.raises(TypeError, match="interpret"):
        me.heaviside(x, 0.0, interpret="yes")
    with pytest.raises(ValueError, match="multiple of 128"):
        me.MgpuElementwiseConfig(block_size=100)


# -- scan ---------------------------------------------------------------------------------
def _problem(T, N, dtype, seed):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(0.7, 0.8, (T, N)), dtype)
    v0 = jnp.asarray(rng.uniform(-0.3, 0.8, N), jnp.float32)  # per neuron
    decay = jnp.asarray(rng.uniform(0.6, 0.9, N), jnp.float32)  # per neuron
    ds = jnp.asarray(rng.normal(size=(T, N)), dtype)
    dv = jnp.asarray(rng.normal(size=N), jnp.float32)
    return x, v0, decay, ds, dv


# (T, N, dtype, prefetch, mode): T = 1 (one chunk, no checkpoints), K + 1, 3K + 5 (a ragged
# last chunk); 300 neurons are 3 CTAs of 128, the last overlapping; 50 are padded to 128.
@pytest.mark.parametrize("T, N, dtype, prefetch, interpret", [
    (3 * K + 5, 300, "float32", True, GPU_INTERPRET),
    pytest.param(K + 1, 50, "float32", False, GPU_INTERPRET, marks=full),
    pytest.param(1, 300, "bfloat16", False, GPU_INTERPRET, marks=full),
    pytest.param(3 * K + 5, 300, "float32", False, True, marks=full),
    pytest.param(2 * K, 130, "bfloat16", True, True, marks=full),
], ids=lambda v: "mgpu" if v is GPU_INTERPRET else ("pallas" if v is True else None))
def test_scan_kernels(T, N, dtype, prefetch, interpret):
    x, v0, decay, ds, dv = _problem(T, N, jnp.dtype(dtype), seed=T + N)
    one = lambda v: jnp.full((1,), v, jnp.float32)  # noqa: E731 (a shared value)
    a0, thr, beta = one(0.1), one(1.0), one(0.5)
    kw = dict(config=mgpu_scan.MgpuScanConfig(chunk=K, block=128, prefetch=prefetch),
              interpret=interpret)

    @jax.jit
    def fused(x, v0, decay, ds, dv):
        (s,), fins, cks = mgpu_scan.scan_forward(
            step, (x,), (v0, a0), (decay, thr, beta), out_dtypes=(x.dtype,),
            final_dtypes=(jnp.float32, jnp.float32), save_checkpoints=True, **kw)
        grads = mgpu_scan.scan_backward(
            step, (x,), (v0, a0), cks, (decay, thr, beta), (ds,), (dv, None),
            want_x=(True,), want_init=(True, True), want_params=(True, False, True), **kw)
        return s, fins, cks, grads

    s, (v_T, a_T), cks, (dxs, dinit, dparams) = fused(x, v0, decay, ds, dv)
    n_ck = -(-T // K) - 1
    assert len(cks) == (2 if n_ck else 0) and all(c.shape == (n_ck, N) for c in cks)
    assert dparams[1] is None and s.dtype == x.dtype and dxs[0].dtype == x.dtype

    full = lambda a: jnp.broadcast_to(a.reshape(()), (N,))  # noqa: E731
    ref_params = (decay, full(thr), full(beta))
    xf = x.astype(jnp.float32)
    s_r, (v_r, a_r) = scan_reference(xf, v0, full(a0), ref_params)
    np.testing.assert_array_equal(np.asarray(s, np.float32), s_r)
    np.testing.assert_array_equal(v_T, v_r)
    np.testing.assert_array_equal(a_T, a_r)
    assert 0.02 < float(s_r.mean()) < 0.9  # spikes do happen

    _, pullback = jax.vjp(scan_reference, xf, v0, full(a0), ref_params)
    gx, gv0, ga0, (gdecay, _, gbeta) = pullback((ds.astype(jnp.float32),
                                                (dv, jnp.zeros(N))))
    tol = 1e-5 if dtype == "float32" else 1e-2  # dx is rounded to bf16 once
    for what, got, want in [("x", dxs[0], gx), ("v0", dinit[0], gv0), ("a0", dinit[1], ga0),
                            ("decay", dparams[0], gdecay), ("beta", dparams[2], gbeta)]:
        assert got.shape == want.shape, what  # per neuron: the caller reduces scalars
        scale = float(np.max(np.abs(want), initial=0.0))
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol,
                                   atol=tol * scale, err_msg=what)


def test_scan_refusals():
    x = jnp.ones((4, 10))
    with pytest.raises(ValueError, match="chunk"):
        mgpu_scan.MgpuScanConfig(chunk=0)
    with pytest.raises(ValueError, match="multiple of 128"):
        mgpu_scan.MgpuScanConfig(chunk=4, block=64)
    with pytest.raises(ValueError, match="int32"):
        mgpu_scan.check_size(2**16, 2**15, mgpu_scan.MgpuScanConfig(chunk=8))
    with pytest.raises(ValueError, match=r"\[T, N\]"):
        mgpu_scan.scan_forward(step, (x[None],), (jnp.ones(10),), (), out_dtypes=(),
                               final_dtypes=(jnp.float32,), save_checkpoints=False,
                               config=mgpu_scan.MgpuScanConfig(chunk=4), interpret=True)


# -- the cuda lowering, per architecture -------------------------------------------------
def _two_state(state, xs, p, fire):
    """Two states, two inputs, a per-neuron parameter: enough of the engine's generality."""
    v, a = state
    exc, inh = xs
    h = v * p["decay"] + exc - 0.5 * inh
    s = fire(h, 1.0 + a)
    return s, (h - (1.0 + a) * s, 0.9 * a + 0.1 * s)


@pytest.mark.parametrize("arch", ["8.0", "9.0", "10.0"])
@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=full)])
def test_every_kernel_lowers_for_cuda(arch, dtype):
    """backend="pallas_mgpu" exported for cuda: the spike's forward and backward kernels and
    the engine's forward, tangent and BPTT kernels, each a Mosaic GPU kernel compiled for
    the architecture asked for (read back from its MLIR), and no Triton kernel."""
    dt = jnp.dtype(dtype)
    sur = sg.QPseudoSpike()  # its g' has pow, which Mosaic GPU lacks (rewritten)

    def spike(v, ct):
        y, vjp = jax.vjp(lambda v: spikefuse.fire(v, 0.5, sur, backend="pallas_mgpu"), v)
        return y, vjp(ct)[0]

    a = jax.ShapeDtypeStruct((3, 1000), dt)
    text = lowering.export_for_cuda(spike, a, a, arch=arch)
    assert "spikefuse_mgpu_heaviside" in text and "spikefuse_mgpu_grad_mul" in text

    params = {"decay": jnp.full((333,), 0.8)}
    xs = jax.ShapeDtypeStruct((5, 333), dt)  # 3 CTAs (the last overlapping), 2 chunks
    config = mgpu_scan.MgpuScanConfig(chunk=3)

    def neuron(exc, inh):
        run = lambda exc, inh: engine.run(_two_state, (exc, inh), (0.0, 0.0), params,  # noqa: E731
                                          backend="pallas_mgpu", config=config)
        out, pullback = jax.vjp(run, exc, inh)
        _, tangent = jax.jvp(run, (exc, inh), (exc, inh))
        return out, pullback(jax.tree.map(jnp.ones_like, out)), tangent

    text2 = lowering.export_for_cuda(neuron, xs, xs, arch=arch)
    assert text2.count("spikefuse_mgpu_scan_fwd") >= 2 and "spikefuse_mgpu_scan_bwd" in text2
    major, minor = map(int, arch.split("."))
    for t in (text, text2):
        assert lowering.TRITON_CALL not in t
        archs = lowering.mosaic_gpu_archs(t)
        assert len(archs) == t.count(lowering.MGPU_CALL) >= 2  # text2: forward, tangent, BPTT
        assert set(archs) == {(major, minor)}
    assert text2.count(lowering.MGPU_CALL) >= 3


def test_mosaic_gpu_step_check_names_the_op_and_family():
    """A step with an op Mosaic GPU cannot lower (expm1) is refused while lowering, naming
    the op, the family and the jax version; the Triton family lowers it."""
    def step_expm1(v, x, p, fire):
        h = v + jnp.expm1(x)
        return fire(h, 1.0), h

    x = jax.ShapeDtypeStruct((3, 200), jnp.float32)
    with pytest.raises(ValueError, match=r"step_expm1.*`expm1`.*Mosaic GPU.*jax "
                                         + jax.__version__.replace(".", r"\.")):
        lowering.export_for_cuda(lambda x: sn.multistep(step_expm1, x, 0.0,
                                                        backend="pallas_mgpu"), x)
    text = lowering.export_for_cuda(lambda x: sn.multistep(step_expm1, x, 0.0,
                                                           backend="pallas_triton"), x)
    assert lowering.TRITON_CALL in text


def test_a_detached_reset_lowers_for_mosaic_gpu():
    """``stop_gradient`` (AdEx's and Izhikevich's detached reset) has no Mosaic GPU rule up
    to jax 0.12: the step check refused such a step on pallas_mgpu. `lowerable` now takes
    it as the identity: the step lowers, and the value and gradient stay those of the step."""
    x = jax.ShapeDtypeStruct((3, 200), jnp.float32)
    step = example_step("adex", "adex_step")
    text = lowering.export_for_cuda(lambda x: jax.grad(lambda x: sn.multistep(
        step, x, (-70.0, 0.0), backend="pallas_mgpu")[0].sum())(x), x)
    assert lowering.MGPU_CALL in text

    def f(u, w):  # d/du of u * stop_gradient(u) is stop_gradient(u): w * u
        return jax.vjp(lambda u: u * jax.lax.stop_gradient(u), u)[1](w)[0]

    u, w = jnp.linspace(-2, 2, 256), jnp.linspace(1, 3, 256)
    assert "stop_gradient" in _prims(lambda u: u * jax.lax.stop_gradient(u), u)
    assert "stop_gradient" not in _prims(me.lowerable(f), u, w)
    np.testing.assert_array_equal(me.lowerable(f)(u, w), np.asarray(w * u))


# -- the launch table ----------------------------------------------------------------------
def test_launch_table_and_heuristics():
    assert mgpu_launch.current_arch() == (9, 0)  # no GPU here: what Mosaic GPU assumes
    for arch in ("8.0", "10.0"):  # the architecture being compiled for, as Mosaic GPU reads it
        with lowering.cuda_mesh((1,), ("d",), arch=arch)[1]:
            assert mgpu_launch.current_arch() == tuple(map(int, arch.split(".")))
    assert mgpu_launch.for_arch((9, 0)) is mgpu_launch.ARCH_LAUNCH[9]
    assert mgpu_launch.for_arch((11, 0)) is mgpu_launch.ARCH_LAUNCH[10]  # the newest below
    assert mgpu_launch.for_arch((7, 5)) is mgpu_launch.ARCH_LAUNCH[8]  # the oldest
    row = mgpu_launch.ARCH_LAUNCH[9]
    # 32 bytes per thread per operand, 128 threads: 1024 f32, 2048 bf16, 512 f64.
    assert [row.elementwise_block(d) for d in ("float32", "bfloat16", "float64")] == [
        1024, 2048, 512]
    assert me.default_config(10**6, jnp.float32).block_size == 1024
    assert me.default_config(300, jnp.float32).block_size == 256  # cut to the array
    assert me.default_config(5, jnp.float32).block_size == 128
    big, small = 4 << 20, 4096
    cfg = mgpu_scan.resolve_config(mgpu_scan.default_config(32, big, "float32"), 32, big,
                                   "float32")
    assert (cfg.chunk, cfg.block, cfg.prefetch) == (8, 128, False)
    cfg = mgpu_scan.resolve_config(mgpu_scan.MgpuScanConfig(chunk=8), 32, big, "bfloat16")
    assert cfg.block == 256  # two neurons per thread for 2-byte inputs, when N is large
    cfg = mgpu_scan.resolve_config(mgpu_scan.default_config(1024, small, "float32"), 1024,
                                   small, "float32")
    # K at most 8 (Mosaic GPU's compile time grows with the unrolled chunk; Triton's is 32
    # here); few CTAs: prefetch.
    assert (cfg.chunk, cfg.block, cfg.prefetch) == (8, 128, True)
    given = mgpu_scan.MgpuScanConfig(chunk=4, block=512, prefetch=False)
    assert mgpu_scan.resolve_config(given, 64, 300, "float32").block == 256  # cut to N
    with pytest.raises(ValueError, match="direct"):
        mgpu_launch.ArchLaunch(copies="tma", elementwise_bytes=32, scan_block=128,
                               scan_block_narrow=256, target_ctas=1)


# -- what Mosaic GPU cannot lower, rewritten -----------------------------------------------
def _prims(fn, *args):
    def walk(jaxpr, out):
        for e in jaxpr.eqns:
            out.add(e.primitive.name)
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                walk(sub, out)
        return out

    return walk(jax.make_jaxpr(fn)(*args).jaxpr, set())


def test_lowerable_pow_against_numpy():
    """pow as exp(y log|x|) with IEEE pow's special cases, against numpy in float64."""
    xs = np.array([-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0, 3.7, np.inf, -np.inf, np.nan])
    ys = np.array([-3.0, -2.5, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 7.25, np.inf, np.nan])
    x, y = (a.astype(np.float32).ravel() for a in np.meshgrid(xs, ys))
    got = np.asarray(jax.jit(me.lowerable(jnp.power))(x, y))
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.power(x.astype(np.float64), y.astype(np.float64))
    # -0.0 with an odd negative power gives +inf here, -inf in IEEE (a sign left out).
    skip = (x == 0) & np.signbit(x) & (y < 0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~skip], want[~skip].astype(np.float32), rtol=2e-6)
    assert "pow" not in _prims(me.lowerable(jnp.power), x, y)
    # QPseudoSpike's range: |y log x| up to ~10, i.e. about 10 ulp.
    base = np.linspace(1.0, 12.0, 1000).astype(np.float32)
    got = np.asarray(me.lowerable(jnp.power)(base, np.float32(-3.7)))
    np.testing.assert_allclose(got, np.power(base.astype(np.float64), -3.7), rtol=2e-6)


def test_lowerable_fmod_custom_jvp_and_add_any():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1e4, 1e4, 4000).astype(np.float32)
    y = rng.uniform(0.5, 20, 4000).astype(np.float32) * rng.choice([-1, 1], 4000)
    got = np.asarray(jax.jit(me.lowerable(jnp.fmod))(x, y))
    np.testing.assert_array_equal(got, np.fmod(x, y))  # exact while |x / y| < 2**24

    @jax.custom_jvp
    def h(u):
        return (u >= 0).astype(u.dtype)

    h.defjvp(lambda p, t: (h(p[0]), 3.0 * t[0]))

    def f(u, w):  # a custom_jvp, a jit and (under vjp) add_any
        return jax.vjp(lambda u: jax.jit(jnp.sin)(u) * h(u) + u * u, u)[1](w)[0]

    u, w = jnp.linspace(-2, 2, 256), jnp.ones(256)
    assert {"custom_jvp_call", "add_any"} <= _prims(f, u, w)
    assert not {"custom_jvp_call", "add_any", "pjit", "jit"} & _prims(me.lowerable(f), u, w)
    np.testing.assert_array_equal(me.lowerable(f)(u, w), f(u, w))
