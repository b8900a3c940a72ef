"""Tests for the neuron engine, ``spikefuse.neurons.multistep``: user steps on every CPU
backend (the GPU and the TPU kernels interpreted) against a ``lax.scan`` written here (with
its own spike rule), forward and reverse mode; transformations; the refusals (raised before
any kernel); the residuals the fused backward keeps; the cuda and tpu lowerings of the
kernels."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import neuron_oracle
import lowering
from lowering import KERNEL_CALL, export_for, export_for_cuda

import spikefuse.neurons as sn
from spikefuse import surrogate as sg
from spikefuse.kernels import mgpu_scan, scan, tpu_scan
from spikefuse.neurons import engine, fused

ALPHA = 3.0  # the surrogate: spikefuse's Sigmoid(alpha=3); the oracle writes g' itself
K = 4
CONFIGS = {"k4": scan.ScanConfig(block=32, chunk=K, num_warps=1),
           "k4pf": scan.ScanConfig(block=64, chunk=K, num_warps=2, prefetch=True)}
TPU_CONFIG = tpu_scan.TpuScanConfig(chunk=K, block_rows=16, block_cols=128)
# 111 neurons are padded to one block of 128; 222 are two, the second overlapping.
MGPU_CONFIG = mgpu_scan.MgpuScanConfig(chunk=K, block=128)
TOL = {"float32": 1e-5, "bfloat16": 1e-2}


def oracle(step, x_seq, init, params):
    return neuron_oracle.oracle(step, x_seq, init, params, neuron_oracle.sigmoid_gprime(ALPHA))


# -- user steps: 1, 2 and 3 state leaves ---------------------------------------------------
def lif_1(v, x, p, fire):
    """One state; per-channel or scalar 1/tau, scalar threshold."""
    h = v + (x - v) * p["inv_tau"]
    s = fire(h, p["thr"])
    return s, h * (1.0 - s)


def alif_2(state, xs, p, fire):
    """Two states (v, a), two inputs (excitatory, inhibitory), a state-dependent threshold."""
    v, a = state
    exc, inh = xs
    h = v * p["decay"] + exc - 0.5 * inh
    theta = p["thr"] + p["beta"] * a
    s = fire(h, theta)
    return s, (h - theta * s, p["rho"] * a + (1.0 - p["rho"]) * s)


def comp_3(state, x, p, fire):
    """Three states (dendrite, soma, adaptation) and two fire calls (a dendritic spike)."""
    d = state["d"] * 0.8 + x
    sd = fire(d, 1.0)
    v = state["v"] * p["decay"] + 0.5 * d + 0.3 * sd
    s = fire(v, p["thr"] + state["a"])
    return s, {"d": d * (1.0 - sd), "v": v - p["thr"] * s, "a": 0.9 * state["a"] + 0.1 * s}


def _problem(name, T, shape, per_channel, dtype, seed):
    """(step, x_seq, init, params) with inputs that make the neurons fire sometimes."""
    rng = np.random.default_rng(seed)
    dt = jnp.dtype(dtype)
    chan = (shape[-2], 1) if per_channel else ()

    def x(mean):
        return jnp.asarray(rng.normal(mean, 0.8, size=(T, *shape)).astype(np.float32), dt)

    def u(lo, hi, size=shape):
        return jnp.asarray(rng.uniform(lo, hi, size=size).astype(np.float32))

    if name == "lif_1":
        return lif_1, x(0.9), u(-0.3, 0.8), {"inv_tau": u(0.3, 0.7, chan), "thr": 1.0}
    if name == "alif_2":
        return (alif_2, (x(0.7), x(0.2)), (u(-0.3, 0.8), u(0.0, 0.3)),
                {"decay": 0.8, "thr": u(0.8, 1.1, chan), "beta": u(0.5, 1.5, chan),
                 "rho": 0.9})
    return (comp_3, x(0.5), {"a": 0.0, "d": u(-0.2, 0.5), "v": u(-0.2, 0.5)},
            {"decay": u(0.6, 0.9, chan), "thr": 1.0})


# (step, T, shape, per-channel parameters, dtype, config): T in {1, K-1, K, K+1, 3K+5};
# 111 = 3 * 37 and 222 neurons span several blocks of 32 / 64 with a ragged last one.
CASES = [
    ("lif_1", 17, (3, 37), True, "float32", "k4"),
    ("lif_1", 1, (3, 37), False, "float32", "k4pf"),
    ("alif_2", 3, (2, 3, 37), True, "float32", "k4"),
    ("alif_2", 5, (3, 37), False, "bfloat16", "k4pf"),
    ("comp_3", 4, (3, 37), False, "float32", "k4pf"),
    ("comp_3", 17, (2, 3, 37), True, "float32", "k4"),
    ("alif_2", 17, (3, 37), True, "bfloat16", "k4"),
]


def _id(case):
    name, T, shape, chan, dtype, cfg = case
    return f"{name}-T{T}-{'x'.join(map(str, shape))}-{'chan' if chan else 'scalar'}-{dtype}-{cfg}"


def _close(actual, expected, dtype, what):
    tol = TOL[dtype]
    expected = np.asarray(expected, np.float64)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol,
                               atol=tol * scale, err_msg=what)


def _random_like(tree, seed):
    rng = np.random.default_rng(seed)

    def one(a):
        a = a if hasattr(a, "dtype") else jnp.asarray(a)
        return jnp.asarray(rng.normal(size=a.shape), a.dtype)

    return jax.tree.map(one, tree)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_engine_matches_scan_of_the_same_step(case):
    name, T, shape, chan, dtype, cfg = case
    step, x_seq, init, params = _problem(name, T, shape, chan, dtype, seed=T)
    sur = sg.Sigmoid(alpha=ALPHA)

    def run(backend):
        kw = dict(config={"interpret": CONFIGS[cfg], "interpret_tpu": TPU_CONFIG,
                          "interpret_mgpu": MGPU_CONFIG}[backend]
                  ) if backend != "reference" else {}
        return lambda x, i, p: engine.run(step, x, i, p, surrogate=sur, backend=backend, **kw)

    fns = {"oracle": lambda x, i, p: oracle(step, x, i, p),
           "reference": run("reference"), "interpret": run("interpret"),
           "interpret_tpu": run("interpret_tpu")}
    if lowering.MGPU_FULL:  # the Mosaic GPU family on the 3.12 row (tests/lowering.py)
        fns["interpret_mgpu"] = run("interpret_mgpu")
    args = (x_seq, init, params)
    out_shape = jax.eval_shape(fns["oracle"], *args)
    cts = _random_like(out_shape, seed=1)
    tangents = _random_like(args, seed=2)
    results = {}
    for label, fn in fns.items():
        def both(*a, fn=fn):
            out, pullback = jax.vjp(fn, *a)
            _, t_out = jax.jvp(fn, a, tangents)
            return out, pullback(cts), t_out

        results[label] = jax.jit(both)(*args)
    (s_o, fin_o), grads_o, tan_o = results["oracle"]
    assert 0.02 < float(jnp.mean(s_o.astype(jnp.float32))) < 0.9  # spikes do happen
    for label in (label for label in fns if label != "oracle"):
        (s, fin), grads, tan = results[label]
        assert s.dtype == s_o.dtype and s.shape == (T, *shape)
        np.testing.assert_array_equal(np.asarray(s, np.float32), np.asarray(s_o, np.float32),
                                      err_msg=label)
        for what, got, want in (("final state", fin, fin_o), ("reverse mode", grads, grads_o),
                                ("forward mode", tan, tan_o)):
            paths = jax.tree_util.tree_flatten_with_path(want)[0]
            for (path, w), g in zip(paths, jax.tree.leaves(got), strict=True):
                assert g.shape == w.shape and g.dtype == w.dtype, (label, what, path)
                _close(g, w, dtype if what == "final state" or "x" in str(path)[:4] else
                       "float32", f"{label}: {what} {jax.tree_util.keystr(path)}")


def test_return_states_and_symbolic_zero_cotangents():
    """return_states; a loss through one output only, and gradients to some arguments only
    (the backward computes just those)."""
    step, x_seq, init, params = _problem("alif_2", 6, (40,), False, "float32", seed=3)
    config = CONFIGS["k4"]

    def run(backend, x, i, p):
        kw = dict(config=config) if backend == "interpret" else {}
        return engine.run(step, x, i, p, surrogate=sg.Sigmoid(alpha=ALPHA), backend=backend,
                          return_states=True, **kw)

    s, fin, states = run("interpret", x_seq, init, params)
    np.testing.assert_array_equal(states[0][-1], fin[0])  # the sequence ends at the final
    for pick, argnums in ((0, (0,)), (1, (1, 2)), (2, (2,))):
        if True:
            def loss(backend, *a):
                out = jax.tree.leaves(run(backend, *a)[pick])
                return sum(jnp.sum(o * jnp.cos(jnp.arange(o.size).reshape(o.shape)))
                           for o in out)

            want = jax.grad(functools.partial(loss, "reference"), argnums)(x_seq, init, params)
            got = jax.jit(jax.grad(functools.partial(loss, "interpret"), argnums))(
                x_seq, init, params)
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                _close(g, w, "float32", f"output {pick}, argnums {argnums}")


def test_vmap_jit_checkpoint_and_no_recompilation():
    step, x_seq, init, params = _problem("lif_1", 6, (5, 40), True, "float32", seed=4)
    sur = sg.Sigmoid(alpha=ALPHA)

    def f(backend, x, inv_tau):
        kw = dict(config=CONFIGS["k4"]) if backend == "interpret" else {}
        p = {"inv_tau": inv_tau, "thr": 1.0}
        return engine.run(step, x, 0.0, p, surrogate=sur, backend=backend, **kw)

    def loss(backend, x, inv_tau):  # vmap over a batch of sequences and of time constants
        s, v = jax.vmap(functools.partial(f, backend), in_axes=(1, 0))(x, inv_tau)
        return jnp.sum(s * jnp.arange(s.shape[-1])) + jnp.sum(v ** 2)

    taus = jnp.linspace(0.3, 0.7, 5).reshape(5, 1)
    want = jax.grad(functools.partial(loss, "reference"), (0, 1))(x_seq, taus)
    fused_grad = jax.jit(jax.grad(jax.checkpoint(functools.partial(loss, "interpret")), (0, 1)))
    for scale in (1.0, 1.1):  # new values, one compilation
        got = fused_grad(x_seq * scale, taus)
    want = jax.grad(functools.partial(loss, "reference"), (0, 1))(x_seq * 1.1, taus)
    for g, w in zip(got, want):
        _close(g, w, "float32", "vmap + checkpoint gradient")
    assert fused_grad._cache_size() == 1
    # vmap of grad too (the backward kernel batched).
    per_tau = jax.vmap(jax.grad(lambda t: jnp.sum(f("interpret", x_seq, t)[0] * x_seq)))(taus)
    ref = jax.vmap(jax.grad(lambda t: jnp.sum(f("reference", x_seq, t)[0] * x_seq)))(taus)
    _close(per_tau, ref, "float32", "vmap of grad")


def test_second_order_is_refused_on_fused_backends():
    x = jnp.full((5, 40), 0.7)

    def loss(backend, x):
        return jnp.sum(sn.multistep(lif_1, x, 0.0, {"inv_tau": 0.5, "thr": 1.0},
                                    backend=backend)[1] ** 2)

    jax.hessian(functools.partial(loss, "reference"))(x[:, :2])  # the reference has it
    with pytest.raises(NotImplementedError, match="reference"):
        jax.hessian(functools.partial(loss, "interpret"))(x)


# -- refusals -----------------------------------------------------------------------------
@pytest.fixture
def no_kernel(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a kernel or scan ran before the step was checked")

    for mod, name in [(fused, "forward"), (engine, "run_reference"),
                      (scan, "scan_forward"), (scan, "scan_backward")]:
        monkeypatch.setattr(mod, name, boom)


def _sum_step(v, x, p, fire):
    return fire(v + x), v + jnp.sum(x)


def _dot_step(v, x, p, fire):
    return fire(v), v + x @ jnp.ones((x.shape[-1], x.shape[-1]))


def _reshape_step(v, x, p, fire):
    return fire(v), v + x.reshape(x.shape[::-1]).reshape(x.shape)


def _gather_step(v, x, p, fire):
    return fire(v), v + x[..., ::-1]


def _cumsum_step(v, x, p, fire):
    return fire(v), v + jnp.cumsum(x, axis=-1)


def _iota_step(v, x, p, fire):
    return fire(v), v + jnp.arange(x.shape[-1], dtype=x.dtype)


def _closure_array_step(v, x, p, fire, w=np.linspace(0, 1, 3).astype(np.float32)):
    return fire(v), v + w * x


def _bad_structure_step(v, x, p, fire):
    return fire(v), (v, v)


def _bad_shape_step(v, x, p, fire):
    return fire(v), jnp.zeros((), v.dtype)


def _bad_dtype_step(v, x, p, fire):
    return fire(v), (v + x).astype(jnp.bfloat16)


def _bad_spike_step(v, x, p, fire):
    return fire(v)[0], v + x


def _erf_step(v, x, p, fire):
    h = v + jax.lax.erf(x)
    return fire(h, 1.0), h


@pytest.mark.parametrize("step, init, exc, words", [
    (_sum_step, 0.0, ValueError, ["_sum_step", "reduce_sum", "reduction"]),
    (_dot_step, 0.0, ValueError, ["_dot_step", "dot_general", "dot product"]),
    (_reshape_step, 0.0, ValueError, ["_reshape_step", "reshape"]),
    (_gather_step, 0.0, ValueError, ["_gather_step", "rev"]),
    (_cumsum_step, 0.0, ValueError, ["_cumsum_step", "cum", "cumulative"]),
    (_iota_step, 0.0, ValueError, ["_iota_step", "iota", "position"]),
    (_closure_array_step, 0.0, ValueError, ["_closure_array_step", "params"]),
    (_bad_structure_step, 0.0, ValueError, ["_bad_structure_step", "structure"]),
    (_bad_shape_step, 0.0, ValueError, ["_bad_shape_step", "shape ()"]),
    (_bad_dtype_step, 0.0, ValueError, ["_bad_dtype_step", "bfloat16", "float32"]),
    (_bad_spike_step, 0.0, ValueError, ["_bad_spike_step", "spike"]),
    (lif_1, np.zeros(3, np.int32), TypeError, ["init", "int32", "floating"]),
    (lif_1, (), ValueError, ["init", "1 to 8"]),
    (lif_1, tuple([0.0] * 9), ValueError, ["init", "1 to 8"]),
    ("not callable", 0.0, TypeError, ["step", "callable"]),
])
@pytest.mark.parametrize("backend", ["reference", "interpret", "pallas"])
def test_refusals_name_the_step_before_any_kernel(no_kernel, step, init, exc, words, backend):
    x = jnp.ones((3, 2, 3), jnp.float32)  # neurons [2, 3]: a reshape to [3, 2] moves them
    params = {"inv_tau": 0.5, "thr": 1.0}
    with pytest.raises(exc) as info:
        sn.multistep(step, x, init, params, backend=backend)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_refusals_of_traced_closures_and_unhashable_steps(no_kernel):
    x = jnp.ones((3, 6), jnp.float32)

    @jax.jit
    def closes_over(tau):
        return sn.multistep(lambda v, x, p, fire: (fire(v), v * tau + x), x, 0.0)

    with pytest.raises(ValueError, match="traced value"):
        closes_over(0.5)

    class Unhashable:
        __hash__ = None

        def __call__(self, v, x, p, fire):
            return fire(v), v + x

    with pytest.raises(TypeError, match="hashable"):
        sn.multistep(Unhashable(), x, 0.0)


def _expm1_step(v, x, p, fire):
    h = v + jnp.expm1(x)
    return fire(h, 1.0), h


@pytest.fixture
def no_kernel_built(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a kernel was built before the step was checked")

    for mod in (scan, tpu_scan):
        for name in ("scan_forward", "scan_backward"):
            monkeypatch.setattr(mod, name, boom)


def _round_step(v, x, p, fire):
    h = v + jnp.round(x)
    return fire(h, 1.0), h


def test_pallas_refuses_what_the_platform_cannot_lower(no_kernel_built):
    """erf and round are elementwise, so reference and the interpret backends run them; the
    GPU (Triton) kernel cannot lower them; the TPU (Mosaic) kernel can lower round (erf's
    derivative holds `polynomial` on jax 0.12, which it cannot), but not expm1, which Triton
    can. "pallas" checks the kernel bodies while lowering, for the platform it lowers for,
    and refuses before any kernel is built (here: while exporting on a CPU)."""
    x = jax.ShapeDtypeStruct((3, 6), jnp.float32)

    def export(step, platform):
        fn = lambda x: sn.multistep(step, x, 0.0, backend="pallas")  # noqa: E731
        if platform == "cuda":
            return export_for_cuda(fn, x)
        return jax.export.export(jax.jit(fn), platforms=["tpu"])(x).mlir_module()

    with pytest.raises(ValueError, match=r"_erf_step.*`erf`.*Triton.*backend='reference'"):
        export(_erf_step, "cuda")
    with pytest.raises(ValueError, match=r"_round_step.*`round`.*Triton"):
        export(_round_step, "cuda")
    with pytest.raises(ValueError, match=r"_expm1_step.*`expm1`.*Mosaic.*backend='reference'"):
        export(_expm1_step, "tpu")
    with pytest.raises(AssertionError, match="kernel was built"):  # passes the check
        export(_round_step, "tpu")
    with pytest.raises(AssertionError, match="kernel was built"):
        export(_expm1_step, "cuda")


def test_elementwise_tricks_are_accepted():
    """Size-1 reshapes, broadcasts, scalar constants, control flow and calls are elementwise."""
    def step(v, x, p, fire):
        h = jnp.squeeze(v[None] * 0.9, 0) + jnp.clip(x, -2.0, 2.0)
        h = jax.lax.fori_loop(0, 2, lambda i, h: h * p["g"], h)
        s = fire(h, 1.0)
        return s, jnp.where(s > 0, 0.0, h)

    x = jnp.asarray(np.random.default_rng(0).normal(0.8, 1, (7, 3, 5)), jnp.float32)
    params = {"g": jnp.full((3, 1), 1.05)}
    want = oracle(step, x, 0.0, params)
    for backend in ("reference", "interpret"):
        got = engine.run(step, x, 0.0, params, surrogate=sg.Sigmoid(alpha=ALPHA),
                         backend=backend, config=CONFIGS["k4"])
        np.testing.assert_array_equal(got[0], want[0])
        _close(got[1], want[1], "float32", backend)


# -- residuals ----------------------------------------------------------------------------
def _kept_bytes(fn, *args):
    """Bytes of the arrays held by ``jax.vjp``'s closure of ``jit(fn)`` (as in training)
    that are not the arguments' own buffers (per-neuron-sized or larger: scalar parameters
    are a few bytes per layer)."""
    _, pullback = jax.vjp(jax.jit(fn), *args)
    inputs = {a.unsafe_buffer_pointer() for a in jax.tree.leaves(args)
              if isinstance(a, jax.Array)}
    return sum(leaf.nbytes for leaf in jax.tree.leaves(pullback)
               if isinstance(leaf, jax.Array) and leaf.size > 1
               and leaf.unsafe_buffer_pointer() not in inputs)


@pytest.mark.parametrize("name", ["lif_1", "alif_2", "comp_3"])
def test_fused_backward_keeps_only_checkpoints(name):
    T, N = 37, 64
    step, x_seq, init, params = _problem(name, T, (2, N // 2), False, "float32", seed=5)
    m = len(jax.tree.leaves(init))
    config = CONFIGS["k4"]
    fused_bytes = _kept_bytes(lambda x, i, p: engine.run(step, x, i, p, backend="interpret",
                                                         config=config), x_seq, init, params)
    bound = m * 4 / config.chunk * T * N  # m * c / K bytes per neuron-step
    assert fused_bytes == m * scan.num_checkpoints(T, config.chunk) * N * 4
    assert fused_bytes <= bound
    reference_bytes = _kept_bytes(lambda x, i, p: engine.run(step, x, i, p,
                                                             backend="reference"),
                                  x_seq, init, params)
    assert reference_bytes >= T * N * 4  # at least one f32 per neuron-step
    assert fused_bytes * 4 < reference_bytes


# -- GPU lowering, checked on CPU ----------------------------------------------------------
def _user_steps_cases():
    for backend, platform in [("pallas", "cuda"), ("pallas", "tpu"), ("pallas_mgpu", "cuda")]:
        for dtype in ("float32", "bfloat16"):
            for name in ("alif_2", "comp_3"):
                rare = backend == "pallas_mgpu" and (dtype, name) != ("float32", "alif_2")
                yield pytest.param(name, dtype, backend, platform,
                                   marks=[lowering.mgpu_full] if rare else [],
                                   id=f"{name}-{dtype}-{backend}-{platform}")


@pytest.mark.parametrize("name, dtype, backend, platform", list(_user_steps_cases()))
def test_user_steps_lower(name, dtype, backend, platform):
    step, x_seq, init, params = _problem(name, 37, (3, 333), True, dtype, seed=6)
    if backend == "pallas_mgpu":  # K = 4: Mosaic GPU's compile time grows with the chunk
        config, call = mgpu_scan.MgpuScanConfig(chunk=4, prefetch=True), lowering.MGPU_CALL
    else:
        config = scan.ScanConfig(block=128, chunk=8, num_warps=4, prefetch=True)
        call = KERNEL_CALL[platform]

    def fwd_bwd(x):
        out, pullback = jax.vjp(lambda x: engine.run(step, x, init, params, backend=backend,
                                                     config=config), x)
        return out, pullback(jax.tree.map(jnp.ones_like, out))

    avals = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x_seq)
    text = export_for(platform, fwd_bwd, avals)
    assert text.count(call) == 2  # the forward and the BPTT kernel
