"""Every backend with ``jax_enable_x64`` on (issue 18, part 1).

Brain-simulation users (brainstate, BrainPy) run with x64 on. There a Python int inside a
kernel becomes int64, and Pallas interpret mode refuses an access whose indices mix int32 and
int64 ("index arguments to dynamic_slice must be integers of the same type"): every fused
neuron on ``"interpret"`` failed, even for float32 inputs. The fix keeps every integer a kernel
body builds int32; these tests hold each kernel family to it:

* the kernel bodies (traced under x64, as every backend traces them) hold no 64-bit integer;
* the elementwise spike (forward, backward) and the engine (forward, forward mode, BPTT) on
  every CPU backend, for float32 and float64 inputs, against closed forms in numpy float64 and
  a ``lax.scan`` oracle with its own spike rule (``neuron_oracle``);
* float32 inputs give the same results with x64 on as with it off;
* the kernels lower for ``cuda`` and ``tpu`` with x64 on.

(Index maps are left as they are: Pallas accepts int32 or int64 from them by design, and its
own default index maps return int64 under x64. So are static indices, Python ints, where they
are an access's only indices: the TPU kernels index their slabs so, and an int32 there would
make Mosaic see a dynamic index.)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import neuron_oracle
from jax.extend import core as jcore
from jax.ref import AbstractRef
from lowering import KERNEL_CALL, MGPU_CALL, export_for, mgpu_full
from test_engine import alif_2 as _alif  # the engine's user step: two states, two inputs

import spikefuse
from spikefuse import surrogate as sg
from spikefuse.kernels import (elementwise, mgpu_elementwise, mgpu_scan, scan, tpu_elementwise,
                               tpu_scan)
from spikefuse.neurons import LIF, PLIF, engine

ALPHA = 3.0
BACKENDS = ("reference", "interpret", "interpret_tpu", "interpret_mgpu")
# The compiled GPU kernels, where a GPU is (bench/gpu_run.sh runs these): the Triton and the
# Mosaic GPU family, with x64 on, as on the interpreters above.
on_gpu = pytest.mark.skipif(jax.default_backend() not in ("gpu", "cuda"),
                            reason="compiled GPU kernels: needs a GPU (bench/gpu_run.sh)")
COMPILED = [pytest.param(b, marks=on_gpu) for b in ("pallas_triton", "pallas_mgpu")]
# Chunks of K = 4 steps: T = 11 runs two full chunks (a checkpoint between them) and a tail.
K, T = 4, 11
CONFIGS = {"reference": {}, "interpret": {"config": scan.ScanConfig(block=32, chunk=K,
                                                                     num_warps=1,
                                                                     prefetch=True)},
           "interpret_tpu": {"config": tpu_scan.TpuScanConfig(chunk=K, block_rows=16,
                                                              block_cols=128)},
           # 111 neurons are padded to one block of 128
           "interpret_mgpu": {"config": mgpu_scan.MgpuScanConfig(chunk=K, block=128,
                                                                 prefetch=True)}}
TOL = {"float32": 1e-5, "float64": 1e-12}
# The kernel families and their kernels, called directly (interpret=False only traces here).
FAMILIES = {"triton": (elementwise, scan), "tpu": (tpu_elementwise, tpu_scan),
            "mgpu": (mgpu_elementwise, mgpu_scan)}
# The primitives a kernel body lives in: pallas_call (Triton, TPU, and the Mosaic GPU bodies
# under Pallas' interpreter), mpmd_map (plgpu.kernel, compiled or in Mosaic GPU interpret mode).
KERNEL_PRIMITIVES = ("pallas_call", "mpmd_map")


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _sigmoid_gprime(u):
    sig = 1.0 / (1.0 + np.exp(-ALPHA * u))
    return ALPHA * sig * (1.0 - sig)


def _close(actual, expected, dtype, what=""):
    tol = TOL[dtype]
    expected = np.asarray(expected, np.float64)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol,
                               atol=tol * scale, err_msg=what)


# -- the kernel bodies hold one integer type ----------------------------------------------
def _sub_jaxprs(params):
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jcore.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jcore.Jaxpr):
                yield v


def _int_dtype(atom):
    dtype = getattr(getattr(atom, "aval", None), "dtype", None)
    return np.dtype(dtype).name if dtype is not None and np.issubdtype(dtype, np.integer) \
        else None


def _index_problems(jaxpr, problems):
    """What breaks "one integer type" in a kernel body: an integer computed as anything but
    int32 (a loop counter, index arithmetic), or a ref access whose integer operands (its
    indices) mix types. Static indices may stay Python ints (int64 literals under x64) where
    they are an access's only indices."""
    for eqn in jaxpr.eqns:
        for sub in _sub_jaxprs(eqn.params):
            _index_problems(sub, problems)
        computed = {_int_dtype(v) for v in eqn.outvars} - {None, "int32"}
        if computed:
            problems.append(f"{eqn.primitive.name} computes {sorted(computed)}")
        if any(isinstance(getattr(v, "aval", None), AbstractRef) for v in eqn.invars):
            ints = {_int_dtype(v) for v in eqn.invars} - {None}
            if len(ints) > 1:
                problems.append(f"{eqn.primitive.name} indexes with {sorted(ints)}")
    return problems


def _kernel_index_problems(fn):
    """{kernel name: `_index_problems` of its body} for every kernel ``fn`` makes."""
    found = {}

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in KERNEL_PRIMITIVES:
                name = str(eqn.params.get("name_and_src_info", eqn.params.get("name")))
                problems = []
                for body in _sub_jaxprs(eqn.params):
                    _index_problems(body, problems)
                found[name.split()[0]] = sorted(set(problems))
            for sub in _sub_jaxprs(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fn)().jaxpr)
    return found


def _step(state, xs, params):
    """A flat two-state step with two inputs, as the scan kernels take it."""
    v, a = state
    h = v * params[0] + xs[0] - 0.5 * xs[1]
    s = (h >= 1.0 + a).astype(h.dtype)
    return (s,), (h * (1.0 - s), 0.9 * a + 0.1 * s)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("interpret", [True, False], ids=["interpreted", "compiled"])
def test_kernel_bodies_use_one_integer_type(family, interpret):
    """Traced with x64 on, every integer a kernel body computes is int32 (the type of
    ``program_id``) and no access mixes index types (fails on the code before the fix: the
    Triton scan's loop counter was int64, and its rows' int32 index met an int64 column
    start)."""
    ew, sc = FAMILIES[family]
    if family == "triton":
        config = scan.ScanConfig(block=128, chunk=8, num_warps=4, prefetch=True)
    elif family == "mgpu":  # compiled: plgpu.kernel (traced only); interpreted: pallas_call
        config = mgpu_scan.MgpuScanConfig(chunk=8, block=128, prefetch=True)
    else:
        config = tpu_scan.TpuScanConfig(chunk=8, block_rows=16, block_cols=128)
        interpret = tpu_elementwise.interpret_mode(True) if interpret else False
    n_t, n = 37, 1000  # four full chunks, a tail, a ragged last block
    xs = (jnp.ones((n_t, n), jnp.float32), jnp.zeros((n_t, n), jnp.float32))
    init = (jnp.zeros((n,), jnp.float32), jnp.zeros((1,), jnp.float32))
    params = (jnp.full((1,), 0.5, jnp.float32),)
    kw = dict(config=config, interpret=interpret)

    def fwd():
        return sc.scan_forward(_step, xs, init, params, out_dtypes=(jnp.float32,),
                               final_dtypes=(jnp.float32,) * 2, save_checkpoints=True, **kw)

    cks = tuple(jnp.zeros(c.shape, c.dtype) for c in jax.eval_shape(fwd)[2])

    def bwd():
        return sc.scan_backward(_step, xs, init, cks, params, (xs[0],), (None, init[0]),
                                want_x=(True, True), want_init=(True, True),
                                want_params=(True,), **kw)

    x = jnp.linspace(-1.0, 1.0, 3000, dtype=jnp.float32)
    kernels = {}
    for fn in (fwd, bwd, lambda: ew.heaviside(x, 0.1, interpret=interpret),
               lambda: ew.grad_mul(x, 0.1, x, (2.0,), lambda d, a: a * d,
                                   interpret=interpret)):
        kernels.update(_kernel_index_problems(fn))
    assert len(kernels) == 4, kernels
    assert kernels == {name: [] for name in kernels}


# -- every backend, every operation, f32 and f64 ------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", [*BACKENDS, *COMPILED])
def test_elementwise_spike(backend, dtype):
    """fire(v, thr) and its gradient against H and g' in numpy float64."""
    rng = np.random.default_rng(0)
    v = rng.normal(0.5, 1.0, size=(5, 301)).astype(dtype)
    ct = rng.normal(size=v.shape).astype(dtype)
    sur = sg.Sigmoid(alpha=ALPHA)
    spikes, pullback = jax.vjp(lambda v: spikefuse.fire(v, 0.5, sur, backend=backend),
                               jnp.asarray(v))
    (grad,) = pullback(jnp.asarray(ct))
    u = v.astype(np.float64) - 0.5
    assert spikes.dtype == grad.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(spikes), (u >= 0).astype(dtype))
    _close(grad, ct * _sigmoid_gprime(u), dtype)


def _problem(dtype):
    rng = np.random.default_rng(1)
    shape = (3, 37)  # 111 neurons: several blocks of 32 and a ragged last one

    def x(mean):
        return jnp.asarray(rng.normal(mean, 0.8, size=(T, *shape)).astype(dtype))

    def u(lo, hi, size=shape):
        return jnp.asarray(rng.uniform(lo, hi, size=size).astype(dtype))

    params = {"decay": 0.8, "thr": u(0.8, 1.1, (3, 1)), "beta": u(0.5, 1.5, (3, 1)),
              "rho": 0.9}
    return (x(0.7), x(0.2)), (u(-0.3, 0.8), u(0.0, 0.3)), params


def _run_engine(backend, dtype):
    """Spikes and final states, the gradients of a random loss through both and a forward-mode
    derivative, of the `_problem` of ``dtype``."""
    if backend == "oracle":
        fn = functools.partial(neuron_oracle.oracle, _alif,
                               gprime=neuron_oracle.sigmoid_gprime(ALPHA))
    else:
        def fn(x, i, p):
            return engine.run(_alif, x, i, p, surrogate=sg.Sigmoid(alpha=ALPHA),
                              backend=backend, **CONFIGS.get(backend, {}))

    args = _problem(dtype)
    cts = _random_like(jax.eval_shape(fn, *args), 2)
    tangents = _random_like(args, 3)

    def all_modes(*a):
        out, pullback = jax.vjp(fn, *a)
        return out, pullback(cts), jax.jvp(fn, a, tangents)[1]

    return jax.jit(all_modes)(*args)


def _random_like(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=jnp.shape(a)),
                                              jnp.result_type(a)), tree)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", [b if b != "interpret_mgpu" else pytest.param(
    b, marks=mgpu_full) for b in BACKENDS] + COMPILED)
def test_engine_forward_tangent_and_bptt(backend, dtype):
    """A user step through the engine: spikes exactly the oracle's, the final state, forward
    mode and every reverse-mode gradient (inputs, initial states, parameters) within the
    dtype's tolerance; outputs keep the input's dtype. For float32 inputs, the same results
    bit for bit with x64 off."""
    (s_o, fin_o), grads_o, tan_o = _run_engine("oracle", dtype)
    result = _run_engine(backend, dtype)
    (s, fin), grads, tan = result
    assert 0.02 < float(jnp.mean(s_o)) < 0.9  # spikes do happen
    assert s.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s_o))
    for what, got, want in (("final state", fin, fin_o), ("reverse mode", grads, grads_o),
                            ("forward mode", tan, tan_o)):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype, what
            _close(g, w, dtype, what)
    if dtype == "float32":
        with jax.enable_x64(False):
            _assert_same(result, _run_engine(backend, dtype))


def _assert_same(on, off):
    """Equal bit for bit. A gradient to a Python-float parameter is weakly typed, float64
    under x64 by jax's own rule: its value must still be the float32 one."""
    for x, y in zip(jax.tree.leaves(on), jax.tree.leaves(off), strict=True):
        if x.dtype != y.dtype:
            assert x.weak_type and x.ndim == 0, (x, y)
        np.testing.assert_array_equal(np.asarray(x).astype(y.dtype), np.asarray(y))


@pytest.mark.parametrize("backend", [b if b != "interpret_mgpu" else pytest.param(
    b, marks=mgpu_full) for b in BACKENDS] + COMPILED)
def test_builtin_neurons_do_not_depend_on_x64(backend):
    """LIF and PLIF (the neurons of the bug report) on float32 inputs: a loss through their
    spikes and its gradient, equal bit for bit with x64 on and off."""
    x = _problem("float32")[0][0]
    weights = jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)

    def results():
        return [jax.jit(jax.value_and_grad(lambda x, n=neuron: jnp.sum(weights * n(x)[0])))(x)
                for neuron in (LIF(tau=2.0, backend=backend),
                               PLIF(init_tau=2.5, backend=backend))]

    on = results()
    assert all(float(jnp.abs(g).sum()) > 0 for _, g in on)  # spikes carry a gradient
    with jax.enable_x64(False):
        _assert_same(on, results())


@pytest.mark.parametrize("backend", ["reference", "interpret"])
def test_memory_scan_with_x64(backend):
    """spikefuse.memory.scan (chunks of time, spikes kept as bits): float32 results equal bit
    for bit with x64 on and off, and float64 ones equal to lax.scan over the same chunks."""
    from spikefuse import memory

    lif = LIF(tau=2.0, backend=backend)

    def results(dtype):
        s = jnp.asarray(np.random.default_rng(5).random((12, 3, 21)) < 0.3, dtype)
        w = jnp.asarray(np.random.default_rng(6).normal(size=(21, 13)), dtype)

        def chunk(w):
            def f(v, s_chunk):
                out, v = lif(s_chunk @ w, v)
                return v, out
            return f

        ours = jax.jit(jax.value_and_grad(lambda w, s: memory.scan(
            chunk(w), jax.ShapeDtypeStruct((3, 13), dtype), s, chunks=3)[1].sum(), (0, 1)))
        plain = jax.jit(jax.value_and_grad(lambda w, s: jax.lax.scan(
            chunk(w), jnp.zeros((3, 13), dtype), s.reshape(3, 4, 3, 21))[1].sum(), (0, 1)))
        return ours(w, s), plain(w, s)

    on, plain = results(jnp.float32)
    assert float(jnp.abs(on[1][0]).sum()) > 0  # the weights get a gradient
    with jax.enable_x64(False):
        _assert_same(on, results(jnp.float32)[0])
    ours64, plain64 = results(jnp.float64)
    assert jax.tree.leaves(ours64)[1].dtype == jnp.float64
    for a, b in zip(jax.tree.leaves(ours64), jax.tree.leaves(plain64)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)



def test_memory_scan_python_float_init_with_x64():
    """A Python float in memory.scan's init is float32 where f's carry is, with x64 on too
    (lax.scan's rule), not float64: the carry and its gradient equal lax.scan's."""
    from spikefuse import memory

    lif = LIF(tau=2.0)
    s = jnp.asarray(np.random.default_rng(7).random((12, 3, 21)) < 0.3, jnp.float32)
    w = jnp.asarray(np.random.default_rng(8).normal(size=(21, 13)), jnp.float32)

    def f(w):
        def chunk(carry, s_chunk):
            v, total = carry
            out, v = lif(s_chunk @ w, v)
            return (v, total + (out * v).sum()), out
        return chunk

    init = (jnp.zeros((3, 13), jnp.float32), 0.0)
    ours = jax.jit(jax.value_and_grad(lambda w: memory.scan(f(w), init, s, chunks=3)[0][1]))
    plain = jax.jit(jax.value_and_grad(lambda w: jax.lax.scan(
        f(w), init, s.reshape(3, 4, 3, 21))[0][1]))
    (got, d_got), (want, d_want) = ours(w), plain(w)
    assert got.dtype == want.dtype == jnp.float32
    assert float(got) == float(want) != 0
    np.testing.assert_allclose(np.asarray(d_got), np.asarray(d_want), rtol=1e-5, atol=1e-6)

# -- the kernels lower for cuda and tpu with x64 on ----------------------------------------
@pytest.mark.parametrize("platform, backend, dtype", [
    ("cuda", "pallas", "float32"), ("cuda", "pallas", "bfloat16"), ("cuda", "pallas", "float64"),
    ("tpu", "pallas", "float32"), ("tpu", "pallas", "bfloat16"),  # Mosaic has no float64
    ("cuda", "pallas_mgpu", "float32"),
    pytest.param("cuda", "pallas_mgpu", "bfloat16", marks=mgpu_full),
    pytest.param("cuda", "pallas_mgpu", "float64", marks=mgpu_full)])
def test_kernels_lower_with_x64(platform, backend, dtype):
    """Elementwise forward and backward and the engine's forward and BPTT, exported for the
    accelerators with x64 on: each call leaves one kernel (Triton or Mosaic TPU for "pallas",
    Mosaic GPU for "pallas_mgpu")."""
    sur = sg.Sigmoid(alpha=ALPHA)
    # Mosaic GPU: K = 4 (its compile time grows with the unrolled chunk).
    kw = {"config": mgpu_scan.MgpuScanConfig(chunk=K)} if backend == "pallas_mgpu" else {}

    def fn(x):
        def loss(x):
            s = spikefuse.fire(x[0], 0.5, sur, backend=backend)
            spikes = engine.run(_alif, (x, x), (0.0, 0.0),
                                {"decay": 0.8, "thr": 1.0, "beta": 1.0, "rho": 0.9},
                                surrogate=sur, backend=backend, **kw)[0]
            return jnp.sum(s * x[1]) + jnp.sum(spikes * x)

        return jax.grad(loss)(x)

    text = export_for(platform, fn, jax.ShapeDtypeStruct((T, 3, 333), dtype))
    # spike forward and backward, the scan forward and BPTT
    call = MGPU_CALL if backend == "pallas_mgpu" else KERNEL_CALL[platform]
    assert text.count(call) == 4
