"""Tests for spikefuse.kernels.elementwise: interpret mode against independent references,
the cuda lowering (jax.export on CPU), no recompilation on a new parameter value, and the
chunking that keeps in-kernel indices inside int32. At the end, the TPU kernels
(spikefuse.kernels.tpu_elementwise) in Pallas' TPU interpret mode against the same
references, their layout and configuration."""

import functools
import warnings

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax import export
from jax.interpreters import mlir

from jax.experimental.pallas import tpu as pltpu

from spikefuse.kernels import _compat
from spikefuse.kernels import elementwise as ew
from spikefuse.kernels import tpu_elementwise as tew

import lowering
from lowering import export_for_cuda

# A small block keeps interpret mode fast while arrays of a few thousand elements still span
# many blocks with a ragged tail.
SMALL = ew.ElementwiseConfig(block_size=128, num_warps=4, num_stages=1)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# grad_mul against a float64 reference: (rtol, atol). f32: 1e-6 relative; the atol (outputs
# are O(1): |g'| <= 1, |t| <= 1) absorbs f32 cancellation such as 1 - sigmoid(z) near 1.
# bf16/f16: computed in f32, rounded once to the output: half an ulp, with 2x slack.
TOLERANCES = {
    "float32": (1e-6, 1e-6),
    "bfloat16": (2.0**-8, 1e-6),
    "float16": (2.0**-10, 1e-6),
}

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


def _sigmoid64(z):
    return 1.0 / (1.0 + np.exp(-z))


# Surrogate derivatives written for this test: (jnp version traced in the kernel, float64
# numpy version, ranges of the parameters). Not spikefuse's formulas, on purpose.
GRAD_FNS = {
    "sigmoid": (
        lambda d, a: a * jax.nn.sigmoid(a * d) * (1 - jax.nn.sigmoid(a * d)),
        lambda d, a: a * _sigmoid64(a * d) * (1 - _sigmoid64(a * d)),
        [(0.5, 4.0)],
    ),
    "triangle": (  # piecewise, with jnp.where
        lambda d, a: jnp.where(jnp.abs(d) < 1 / a, a * a * (1 / a - jnp.abs(d)), 0.0),
        lambda d, a: np.where(np.abs(d) < 1 / a, a * a * (1 / a - np.abs(d)), 0.0),
        [(0.5, 2.0)],
    ),
    "atan2p": (  # two parameters
        lambda d, a, h: h * a / (2 * (1 + (jnp.pi / 2 * a * d) ** 2)),
        lambda d, a, h: h * a / (2 * (1 + (np.pi / 2 * a * d) ** 2)),
        [(0.5, 2.0), (0.25, 1.0)],
    ),
}


def _np(a):
    return np.asarray(jax.device_get(a))


def _f32(a):
    return np.asarray(a).astype(np.float32)


def _ref_heaviside(x, thr):
    """H(x - thr) with x - thr in f32 (all test dtypes compute in f32), in numpy."""
    return ((_f32(x) - _f32(thr)) >= 0).astype(x.dtype)


def _ref_grad_mul(x, thr, t, params, grad64):
    d = (_f32(x) - _f32(thr)).astype(np.float64)  # the kernel's subtraction, exactly
    return _f32(t).astype(np.float64) * grad64(d, *(_f32(p).astype(np.float64) for p in params))


def _top_level_primitives(fn, *args):
    # A fresh lambda each time: make_jaxpr caches traces per function, and some tests
    # monkeypatch module state between traces.
    return [e.primitive.name for e in jax.make_jaxpr(lambda *a: fn(*a))(*args).jaxpr.eqns]


def _count_pallas_calls(fn, *args):
    return _top_level_primitives(fn, *args).count("pallas_call")


@st.composite
def shapes(draw, max_size=3000):
    """Ranks 0-5, sizes up to `max_size`: up to ~24 blocks of 128, mostly with a ragged tail."""
    rank = draw(st.integers(0, 5))
    shape = []
    for _ in range(rank):
        room = max(1, max_size // max(1, int(np.prod(shape))))
        shape.append(draw(st.integers(1, min(room, 40 if rank > 2 else 1500))))
    return tuple(shape)


def _operand_shape(kind, shape, rng):
    """The shape of a thr/param operand: 0-d, per-element, or a broadcast (per-channel-like)."""
    if kind == "scalar" or not shape:
        return ()
    if kind == "full":
        return shape
    # "broadcast": keep one random axis, size 1 elsewhere, maybe dropping leading axes.
    axis = rng.integers(len(shape))
    b = tuple(s if i == axis else 1 for i, s in enumerate(shape))
    return b[rng.integers(0, axis + 1):]


# ---------------------------------------------------------------------------------------
# heaviside


@SETTINGS
@given(shape=shapes(), dtype=st.sampled_from(sorted(DTYPES)),
       thr_kind=st.sampled_from(["scalar", "full", "broadcast"]), seed=st.integers(0, 2**31))
def test_heaviside_matches_reference(shape, dtype, thr_kind, seed):
    rng = np.random.default_rng(seed)
    dt = DTYPES[dtype]
    x = rng.normal(size=shape).astype(dt)
    thr = rng.normal(scale=0.5, size=_operand_shape(thr_kind, shape, rng)).astype(np.float32)
    if x.size and thr_kind == "scalar":
        x.reshape(-1)[:: 7] = thr.astype(dt)  # exact ties: x - thr == 0 -> 1 ...
        thr = thr.astype(dt).astype(np.float32)  # ... so thr is representable in dt
    got = ew.heaviside(jnp.asarray(x), jnp.asarray(thr), interpret=True, config=SMALL)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_array_equal(_np(got), _ref_heaviside(x, thr))


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_heaviside_special_values(dtype):
    dt = DTYPES[dtype]
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 0.5], dt)
    want = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1], dt)
    for config in (SMALL, None):  # one ragged block of 128, or of 16 (the default)
        got = ew.heaviside(jnp.asarray(x), 0.0, interpret=True, config=config)
        np.testing.assert_array_equal(_np(got), want)
    # Thresholds: x == thr -> 1, inf - inf = NaN -> 0, finite - inf -> 0 / 1.
    x = np.array([0.5, np.inf, 1.0, -1.0], dt)
    thr = np.array([0.5, np.inf, np.inf, -np.inf], np.float32)
    got = ew.heaviside(jnp.asarray(x), jnp.asarray(thr), interpret=True, config=SMALL)
    np.testing.assert_array_equal(_np(got), np.array([1, 0, 0, 1], dt))


# ---------------------------------------------------------------------------------------
# grad_mul


@SETTINGS
@given(shape=shapes(), dtype=st.sampled_from(sorted(DTYPES)),
       name=st.sampled_from(sorted(GRAD_FNS)),
       thr_kind=st.sampled_from(["scalar", "full"]),
       param_kind=st.sampled_from(["scalar", "full", "broadcast"]), seed=st.integers(0, 2**31))
def test_grad_mul_matches_reference(shape, dtype, name, thr_kind, param_kind, seed):
    rng = np.random.default_rng(seed)
    dt = DTYPES[dtype]
    grad_fn, grad64, ranges = GRAD_FNS[name]
    x = rng.uniform(-3, 3, size=shape).astype(dt)
    t = rng.uniform(-1, 1, size=shape).astype(dt)
    thr = rng.uniform(-0.5, 0.5, size=_operand_shape(thr_kind, shape, rng)).astype(np.float32)
    params = tuple(
        rng.uniform(lo, hi, size=_operand_shape(param_kind, shape, rng)).astype(np.float32)
        for lo, hi in ranges)
    got = ew.grad_mul(jnp.asarray(x), jnp.asarray(thr), jnp.asarray(t),
                      tuple(map(jnp.asarray, params)), grad_fn, interpret=True, config=SMALL)
    assert got.shape == x.shape and got.dtype == t.dtype
    rtol, atol = TOLERANCES[dtype]
    want = _ref_grad_mul(x, thr, t, params, grad64)
    np.testing.assert_allclose(_np(got).astype(np.float64), want, rtol=rtol, atol=atol)


def test_grad_mul_per_element_param_and_default_config():
    """A per-element parameter array, rank 5, and the default config (ragged 1024 blocks)."""
    rng = np.random.default_rng(0)
    grad_fn, grad64, _ = GRAD_FNS["sigmoid"]
    x = rng.normal(size=(3, 5, 7, 11, 2)).astype(np.float32)  # rank 5, 2310 elements
    t = rng.uniform(-1, 1, size=x.shape).astype(np.float32)
    alpha = rng.uniform(0.5, 4.0, size=x.shape).astype(np.float32)
    got = ew.grad_mul(x, 0.25, t, (alpha,), grad_fn, interpret=True)
    np.testing.assert_allclose(_np(got), _ref_grad_mul(x, np.float32(0.25), t, (alpha,), grad64),
                               rtol=1e-6, atol=1e-6)


def test_grad_mul_mixed_dtypes_and_constant_grad():
    """t's dtype sets the output; a g' that ignores d still yields x's shape."""
    x = jnp.linspace(-1, 1, 300, dtype=jnp.bfloat16)
    t = jnp.linspace(0, 3, 300, dtype=jnp.float32)
    got = ew.grad_mul(x, 0.0, t, (2.0,), lambda d, a: a, interpret=True, config=SMALL)
    assert got.dtype == jnp.float32 and got.shape == (300,)
    np.testing.assert_array_equal(_np(got), 2 * _np(t))


def test_float64_computes_in_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x = rng.normal(size=1000)
        t = rng.uniform(-1, 1, size=1000)
        grad_fn, grad64, _ = GRAD_FNS["atan2p"]
        got = ew.grad_mul(jnp.asarray(x), 0.1, jnp.asarray(t), (1.5, 0.5), grad_fn,
                          interpret=True, config=SMALL)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(_np(got), t * grad64(x - 0.1, 1.5, 0.5), rtol=1e-13)
        h = ew.heaviside(jnp.asarray(x), 0.1, interpret=True, config=SMALL)
        np.testing.assert_array_equal(_np(h), (x - 0.1 >= 0).astype(np.float64))


# ---------------------------------------------------------------------------------------
# Shapes without a kernel launch or with a single element


@pytest.mark.parametrize("shape", [(0,), (3, 0, 2), (0, 0, 0, 0, 0)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_empty(shape, dtype):
    dt = DTYPES[dtype]
    x = jnp.zeros(shape, dt)
    h = ew.heaviside(x, 0.0, interpret=True)
    g = ew.grad_mul(x, 0.0, x.astype(jnp.float16), (1.0,), lambda d, a: a * d, interpret=True)
    assert (h.shape, h.dtype, g.shape, g.dtype) == (shape, dt, shape, jnp.float16)
    assert _count_pallas_calls(lambda x: ew.heaviside(x, 0.0, interpret=True), x) == 0


@pytest.mark.parametrize("config", [SMALL, None])
def test_zero_d(config):
    x, t = jnp.float32(0.75), jnp.float32(2.0)
    h = ew.heaviside(x, jnp.float32(0.5), interpret=True, config=config)
    assert h.shape == () and float(h) == 1.0
    g = ew.grad_mul(x, 0.5, t, (jnp.float32(3.0),), lambda d, a: a * d, interpret=True,
                    config=config)
    assert g.shape == () and g.dtype == jnp.float32
    np.testing.assert_allclose(float(g), 2.0 * 3.0 * 0.25, rtol=1e-7)


# ---------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("n", [1, 3, 127, 128, 1000, 2**20 + 1, 2**28])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
def test_default_config(n, dtype):
    c = ew.default_config(n, dtype)
    assert c.block_size & (c.block_size - 1) == 0 and c.num_warps & (c.num_warps - 1) == 0
    assert c.block_size <= 1 << (n - 1).bit_length() and c.num_stages == 1
    assert c.block_size * jnp.dtype(dtype).itemsize <= 4096  # 32 bytes x 128 threads


def test_caller_config_is_kept():
    x = jnp.zeros(1000, jnp.float32)
    grids = []
    for config in (SMALL, ew.ElementwiseConfig(256, 2, 3), None):
        jaxpr = jax.make_jaxpr(lambda x: ew.heaviside(x, 0.0, interpret=False, config=config))(x)
        [eqn] = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "pallas_call"]
        grids.append(eqn.params["grid_mapping"].grid)
        if config is not None:
            assert eqn.params["compiler_params"].num_warps == config.num_warps
            assert eqn.params["compiler_params"].num_stages == config.num_stages
    assert grids == [(8,), (4,), (1,)]


def _kernel_ref_accesses(fn, *args):
    """(primitive, ref shape) of each ref access in the single pallas_call's kernel body."""
    [eqn] = [e for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns if e.primitive.name == "pallas_call"]
    return [(e.primitive.name, e.invars[0].aval.shape) for e in eqn.params["jaxpr"].eqns
            if e.primitive.name in ("get", "swap", "masked_load", "masked_swap")]


@pytest.mark.parametrize("n, ragged", [(1000, True), (1024, False), (3, True)])
def test_block_accesses_masked_exactly_when_ragged(n, ragged):
    """Triton does not mask plain ref accesses (and interpret mode hides a missing mask), so
    check the kernel body: masked block loads/stores on a ragged grid, plain ones otherwise."""
    x = jnp.zeros(n, jnp.float32)
    fn = lambda x: ew.grad_mul(x, 0.5, x, (2.0, x), lambda d, a, b: a * b * d, interpret=False,
                               config=SMALL)
    accesses = _kernel_ref_accesses(fn, x)
    block = [name for name, shape in accesses if shape == (128,)]
    scalar = [name for name, shape in accesses if shape == (1,)]
    want_load, want_store = ("masked_load", "masked_swap") if ragged else ("get", "swap")
    assert sorted(block) == sorted([want_load] * 3 + [want_store])  # x, t, b; the output
    assert scalar == ["get", "get"]  # thr and a, loaded once per program


@pytest.mark.parametrize("bad", [dict(block_size=100), dict(block_size=2**21),
                                 dict(num_warps=3), dict(num_stages=0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        ew.ElementwiseConfig(**{**dict(block_size=128, num_warps=4, num_stages=1), **bad})


def test_input_validation():
    x = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="does not broadcast"):
        ew.heaviside(x, jnp.zeros(4), interpret=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        ew.grad_mul(x, 0.0, x, (jnp.zeros((2, 4, 3)),), lambda d, a: a, interpret=True)
    with pytest.raises(ValueError, match="t must have"):
        ew.grad_mul(x, 0.0, x[0], (), lambda d: d, interpret=True)
    with pytest.raises(TypeError, match="floating"):
        ew.heaviside(jnp.zeros(3, jnp.int32), 0, interpret=True)


# ---------------------------------------------------------------------------------------
# GPU lowering, checked on CPU


def _heaviside_fn(x, thr, t, *params):
    del t, params
    return ew.heaviside(x, thr, interpret=False)


@pytest.mark.parametrize("kernel", ["heaviside", *sorted(GRAD_FNS)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("per_element", [False, True], ids=["scalar", "per_element"])
def test_lowers_for_cuda(kernel, dtype, per_element):
    shape = (7, 300)  # 2100 elements: a ragged tail under the default block
    pshape = shape if per_element else ()
    if kernel == "heaviside":
        fn, name, n_params = _heaviside_fn, "spikefuse_heaviside", 0
    else:
        grad_fn, _, ranges = GRAD_FNS[kernel]
        n_params, name = len(ranges), "spikefuse_grad_mul"

        def fn(x, thr, t, *params):
            return ew.grad_mul(x, thr, t, params, grad_fn, interpret=False)

    dt = DTYPES[dtype]
    param = jax.ShapeDtypeStruct(pshape, jnp.float32)
    avals = [jax.ShapeDtypeStruct(shape, dt), param, jax.ShapeDtypeStruct(shape, dt)]
    avals += [param] * n_params
    text = export_for_cuda(fn, *avals)
    assert name in text and "__gpu$xla.gpu.triton" in text


def test_lowers_for_cuda_unragged_and_0d():
    for shape in [(4096,), ()]:
        aval = jax.ShapeDtypeStruct(shape, jnp.float32)
        text = export_for_cuda(lambda x: ew.heaviside(x, 0.0, interpret=False), aval)
        assert "spikefuse_heaviside" in text


def test_triton_deprecation_filter_is_narrow():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with _compat.silence_triton_deprecation():
            warnings.warn("The Pallas Triton backend is deprecated and will be removed",
                          DeprecationWarning)
            warnings.warn("something else is deprecated", DeprecationWarning)
            warnings.warn("The Pallas Triton backend is deprecated", UserWarning)
        warnings.warn("The Pallas Triton backend is deprecated (outside)", DeprecationWarning)
    assert [(w.category, str(w.message)) for w in seen] == [
        (DeprecationWarning, "something else is deprecated"),
        (UserWarning, "The Pallas Triton backend is deprecated"),
        (DeprecationWarning, "The Pallas Triton backend is deprecated (outside)")]


def test_silenced_lowering_rule_inside_a_primitive():
    """The intended use: a primitive whose lowering rule is `mlir.lower_fun` of a kernel."""
    prim = jax.extend.core.Primitive("test_elementwise_spike")
    prim.def_abstract_eval(lambda x, thr: jax.core.ShapedArray(x.shape, x.dtype))

    def rule(interpret):
        fn = functools.partial(lambda x, thr, i: ew.heaviside(x, thr, interpret=i, config=SMALL),
                               i=interpret)
        return _compat.silence_triton_deprecation()(mlir.lower_fun(fn, multiple_results=False))

    mlir.register_lowering(prim, rule(True), platform="cpu")
    mlir.register_lowering(prim, rule(False), platform="cuda")
    x, thr = jnp.linspace(-1, 1, 1000, dtype=jnp.float32), jnp.float32(0.2)
    np.testing.assert_array_equal(_np(jax.jit(prim.bind)(x, thr)),
                                  _ref_heaviside(_np(x), np.float32(0.2)))
    # export_for_cuda filters Triton warnings itself; export here without that filter.
    with warnings.catch_warnings(record=True) as seen, lowering._abstract_gpu():
        warnings.simplefilter("always")
        text = export.export(
            jax.jit(prim.bind), platforms=["cuda"],
            disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
        )(x, thr).mlir_module()
    assert "spikefuse_heaviside" in text
    assert not [w for w in seen if "Triton" in str(w.message)]


# ---------------------------------------------------------------------------------------
# No recompilation when a scalar parameter or the threshold changes value


def test_new_param_value_does_not_retrace():
    traces = []

    def grad_fn(d, a):
        traces.append(1)  # runs once per trace of the kernel body
        return a * jax.nn.sigmoid(a * d) * (1 - jax.nn.sigmoid(a * d))

    f = jax.jit(lambda x, thr, t, a: ew.grad_mul(x, thr, t, (a,), grad_fn, interpret=True,
                                                 config=SMALL))
    x = jnp.linspace(-2, 2, 1000, dtype=jnp.float32)
    out1 = f(x, jnp.float32(0.1), x, jnp.float32(2.0))
    n_traces = len(traces)
    out2 = f(x, jnp.float32(-0.3), x, jnp.float32(5.0))
    assert len(traces) == n_traces >= 1
    assert f._cache_size() == 1
    assert not np.array_equal(_np(out1), _np(out2))


# ---------------------------------------------------------------------------------------
# Arrays too large for int32 indices: chunked (logic tested with a small limit)


def test_chunk_bounds_beyond_int32():
    n = 3 * 2**31 + 12345
    for block in (1, 128, 1024, 2**20):
        bounds = ew._chunks(n, block)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        for start, stop in bounds:
            size = stop - start
            assert 0 < size <= 2**31 - block
            assert -(-size // block) * block - 1 < 2**31  # largest in-kernel index
            assert start == bounds[0][0] or start % block == 0  # whole blocks per chunk
    assert ew._chunks(2**31 - 1024, 1024) == [(0, 2**31 - 1024)]  # no split below the limit


def test_chunked_matches_unchunked(monkeypatch):
    rng = np.random.default_rng(1)
    grad_fn, grad64, _ = GRAD_FNS["atan2p"]
    x = rng.normal(size=(20, 101)).astype(np.float32)  # 2020 elements
    t = rng.uniform(-1, 1, size=x.shape).astype(np.float32)
    thr = rng.uniform(-0.5, 0.5, size=x.shape).astype(np.float32)  # per-element: chunked too
    a = rng.uniform(0.5, 2.0, size=(1, 101)).astype(np.float32)  # broadcast: chunked too
    h_fn = functools.partial(ew.heaviside, interpret=True, config=SMALL)
    g_fn = functools.partial(ew.grad_mul, grad_fn=grad_fn, interpret=True, config=SMALL)
    # Normal sizes: one pallas_call and nothing else touching memory.
    for prims in (_top_level_primitives(h_fn, x, thr),
                  _top_level_primitives(lambda *a: g_fn(*a[:3], a[3:]), x, thr, t, x, 0.5)):
        assert prims.count("pallas_call") == 1
        assert set(prims) <= {"pallas_call", "reshape", "convert_element_type"}, prims

    monkeypatch.setattr(ew, "_INDEX_LIMIT", 1024)  # chunks of 1024 - 128 = 896 elements
    assert ew._chunks(x.size, 128) == [(0, 896), (896, 1792), (1792, 2020)]
    assert _count_pallas_calls(h_fn, x, thr) == 3
    assert _count_pallas_calls(lambda *a: g_fn(*a[:3], a[3:]), x, thr, t, a, np.float32(0.5)) == 3
    np.testing.assert_array_equal(_np(h_fn(x, thr)), _ref_heaviside(x, thr))
    got = g_fn(x, thr, t, (a, np.float32(0.5)))
    np.testing.assert_allclose(_np(got), _ref_grad_mul(x, thr, t, (a, np.float32(0.5)), grad64),
                               rtol=1e-6, atol=1e-6)
    text = export_for_cuda(lambda x, thr: ew.heaviside(x, thr, interpret=False, config=SMALL),
                           jax.ShapeDtypeStruct(x.shape, jnp.float32),
                           jax.ShapeDtypeStruct((), jnp.float32))
    assert text.count("spikefuse_heaviside") >= 3


# ---------------------------------------------------------------------------------------
# The TPU kernels in Pallas' TPU interpret mode: a simulator of the TPU's memories that runs
# the "parallel" grid dims in a random order and refuses out-of-bounds reads and revisited
# output blocks. (backend="interpret_tpu" runs the same kernels in Pallas' generic
# interpreter, which passes through jax's transformations: test_spike_backends.py.)

TPU_SMALL = tew.TpuElementwiseConfig(block_rows=16, block_cols=128)
TPU_INTERPRET = pltpu.InterpretParams()


# (shape, dtype, threshold shape, parameter shapes): ragged blocks in both dims, 5-D with a
# per-feature row, a ragged 1-D array, 0-d; thresholds and parameters of every kind.
@pytest.mark.parametrize("shape, dtype, thr_shape, p_shapes", [
    ((37, 300), "float32", (), [(37, 300), ()]),
    ((2, 3, 5, 7, 11), "bfloat16", (11,), [(1, 11), (2, 3, 5, 7, 11)]),
    ((1025,), "float16", (1025,), [(), ()]),
    ((), "float32", (), [(), ()]),
], ids=["37x300-f32", "5d-bf16", "1025-f16", "0d-f32"])
def test_tpu_kernels_in_tpu_interpret_mode(shape, dtype, thr_shape, p_shapes):
    rng = np.random.default_rng(len(shape))
    dt = DTYPES[dtype]
    grad_fn, grad64, ranges = GRAD_FNS["atan2p"]
    x = rng.uniform(-3, 3, size=shape).astype(dt)
    t = rng.uniform(-1, 1, size=shape).astype(dt)
    thr = rng.uniform(-0.5, 0.5, size=thr_shape).astype(dt).astype(np.float32)
    x.reshape(-1)[::7] = np.broadcast_to(thr, shape).reshape(-1)[::7]  # exact ties -> 1
    params = tuple(rng.uniform(lo, hi, size=ps).astype(np.float32)
                   for (lo, hi), ps in zip(ranges, p_shapes))
    h = tew.heaviside(x, thr, interpret=TPU_INTERPRET, config=TPU_SMALL)
    g = tew.grad_mul(x, thr, t, params, grad_fn, interpret=TPU_INTERPRET, config=TPU_SMALL)
    assert (h.shape, h.dtype, g.shape, g.dtype) == (shape, dt, shape, dt)
    np.testing.assert_array_equal(_np(h), _ref_heaviside(x, thr))
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(_np(g).astype(np.float64), _ref_grad_mul(x, thr, t, params, grad64),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape, view", [((), (1, 1)), ((5,), (1, 5)), ((512,), (4, 128)),
                                         ((3, 7), (3, 7)), ((2, 3, 5, 7, 11), (210, 11))])
def test_tpu_view_keeps_the_minor_dim(shape, view):
    assert tew.view(shape) == view


def test_tpu_config_and_dtype_validation():
    for bad in (dict(block_rows=8), dict(block_rows=0), dict(block_cols=100)):
        with pytest.raises(ValueError, match="multiple of"):
            tew.TpuElementwiseConfig(**{**dict(block_rows=16, block_cols=128), **bad})
    c = tew.default_config(10_000, 300, jnp.float32)  # 384 lanes padded: 672 rows
    assert (c.block_rows, c.block_cols) == (672, 384)
    assert tew.default_config(10, 5000, jnp.bfloat16).block_cols == 2048
    with jax.enable_x64(True):  # Mosaic has no f64: refused when compiling, run interpreted
        x = jnp.linspace(-1, 1, 300, dtype=jnp.float64)
        with pytest.raises(TypeError, match="float64"):
            tew.heaviside(x, 0.0, interpret=False)
        np.testing.assert_array_equal(_np(tew.heaviside(x, 0.0, interpret=True)),
                                      (_np(x) >= 0).astype(np.float64))
    with pytest.raises(TypeError, match="interpret"):
        tew.heaviside(jnp.zeros(3), 0.0, interpret="yes")
    with pytest.raises(ValueError, match="does not broadcast"):
        tew.grad_mul(jnp.zeros((4, 3)), jnp.zeros(4), jnp.zeros((4, 3)), (), lambda d: d,
                     interpret=True)


def test_tpu_grid_and_blocks_of_the_lowered_kernel():
    """The pallas_call the TPU kernel builds: a 2-D grid over the [M, D] view with the
    configured blocks, both dims "parallel"; scalars in SMEM, a per-feature row as a (1, bd)
    block; and the lowering for tpu holds one Mosaic kernel per call."""
    x = jnp.zeros((3, 40, 300), jnp.bfloat16)  # [120, 300]
    fn = lambda x, thr, a: tew.grad_mul(x, thr, x, (a,), lambda d, a: a * d,  # noqa: E731
                                         interpret=False, config=TPU_SMALL)
    args = (x, jnp.zeros(300, jnp.float32), jnp.float32(2.0))
    [eqn] = [e for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns if e.primitive.name == "pallas_call"]
    grid_mapping = eqn.params["grid_mapping"]
    assert grid_mapping.grid == (8, 3)
    blocks = [(tuple(getattr(b, "block_size", b) for b in bm.block_shape),
               str(bm.block_aval.memory_space).lower()) for bm in grid_mapping.block_mappings]
    # x, thr (a row), t, a (an SMEM scalar), the output
    assert [b for b, _ in blocks] == [(16, 128), (1, 128), (16, 128), (1, 1), (16, 128)]
    assert [m for _, m in blocks] == ["default"] * 3 + ["smem", "default"]
    assert eqn.params["compiler_params"].dimension_semantics == ("parallel", "parallel")
    text = lowering.export_for_tpu(fn, *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args))
    assert text.count(lowering.TPU_CALL) == 1 and "spikefuse_tpu_grad_mul" in text
