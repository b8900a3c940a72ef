"""Hardened public API: property tests over every public entry point and every CPU backend.

Valid input (random shapes from 0-d and empty to ragged 1023/1025 and rank 5, f32/bf16/f16,
parameters from the registry's ``sample`` ranges, scalar and per-element thresholds, T in
1..40 for neurons) must give the same result on "reference" and "interpret": spikes exactly,
gradients within ``GRAD_TOL``. Invalid input must raise ``TypeError``/``ValueError`` whose
message names the argument and what was expected, before anything is computed: the
``no_launch`` guard replaces the Pallas kernels, the scan kernels, the spike primitives and
the neuron runners with a function that raises ``Launched`` (a ``BaseException``, so no
``except Exception`` in the library can swallow it). ``test_guard_trips_on_valid_input``
shows the guard is not vacuous.

The tests at the end pin gaps this suite found and that were then fixed.
"""

from __future__ import annotations

import contextlib

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spikefuse
from spikefuse import neurons as sn
from spikefuse import surrogate as sf
from spikefuse.kernels import dispatch, elementwise, scan
from spikefuse.neurons import engine, fused
from spikefuse.surrogate import _spike
from spikefuse.surrogate.registry import SHAPES

from test_spike_backends import TOL as _SPIKE_TOL

BACKENDS = ("reference", "interpret")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# (rtol, atol) of interpret against reference, by dtype. Elementwise: test_spike_backends'
# table. Neurons: relative to the largest reference magnitude (BPTT sums T terms).
GRAD_TOL = {name: _SPIKE_TOL[dt] for name, dt in DTYPES.items()}
NEURON_TOL = {"float32": (1e-5, 1e-5), "bfloat16": (2.0**-7, 2.0**-7), "float16": (2.0**-9, 2.0**-9)}
SETTINGS = dict(deadline=None, derandomize=True)


# -- the guard ------------------------------------------------------------------------------
class Launched(BaseException):
    """Raised by the guard when computation starts; not an Exception, so nothing catches it."""


@contextlib.contextmanager
def no_launch():
    def boom(*args, **kwargs):
        raise Launched("a kernel, primitive or scan ran before validation finished")

    with pytest.MonkeyPatch.context() as mp:
        for obj, name in [(elementwise, "heaviside"), (elementwise, "grad_mul"),
                          (scan, "scan_forward"), (scan, "scan_backward"),
                          (_spike.spike_p, "bind"), (_spike.spike_grad_p, "bind"),
                          (_spike.spike_partitioned_p, "bind"),
                          (_spike.spike_grad_partitioned_p, "bind"),
                          (fused, "forward"), (engine, "run_reference")]:
            mp.setattr(obj, name, boom)
        yield


@contextlib.contextmanager
def global_backend(name):
    """set_backend(name) for the block, restoring the process default afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dispatch, "_global", None)
        spikefuse.set_backend(name)
        yield


# -- strategies -----------------------------------------------------------------------------
ODD_SHAPES = [(), (0,), (4, 0, 3), (1,), (1023,), (1025,), (3, 341), (5, 205), (1, 2, 3, 4, 5)]
shapes = st.one_of(st.sampled_from(ODD_SHAPES),
                   hnp.array_shapes(min_dims=0, max_dims=5, min_side=1, max_side=5))
NEURON_SHAPES = st.one_of(st.sampled_from([(), (1,), (0,), (37,), (65,), (3, 5), (2, 3, 4)]),
                          hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=6))


def _params(spec, rng, shape=None):
    """Random valid parameters; with ``shape``, one of them per element along the last axes."""
    p = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in spec.sample.items()}
    if shape is not None and p:
        key = sorted(p)[int(rng.integers(len(p)))]
        lo, hi = spec.sample[key]
        p[key] = jnp.asarray(rng.uniform(lo, hi, shape), jnp.float32)
    return p


def _suffix(shape, rng):
    """A shape that broadcasts to ``shape`` without enlarging it (a trailing suffix, or ())."""
    k = int(rng.integers(0, len(shape) + 1))
    return tuple(shape[k:])


def _close(got, want, dtype_name, what, tol=None):
    rtol, atol = (tol or GRAD_TOL)[dtype_name]
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    if tol is NEURON_TOL:
        atol = atol * max(float(np.max(np.abs(want), initial=0.0)), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


# -- valid input: surrogates and fire -----------------------------------------------------
def _surrogate_entry(entry, spec, params, x, thr, backend):
    """Runs one public entry point; returns (H, pullback)."""
    if entry == "fire":
        return jax.vjp(lambda v, t: spikefuse.fire(v, t, spec.cls(**params), backend=backend), x, thr)
    if entry == "class-use_backend":
        with spikefuse.use_backend(backend):
            return jax.vjp(lambda v, t: spec.cls(**params)(v), x, thr)
    if entry == "functional-set_backend":
        with global_backend(backend):
            return jax.vjp(lambda v, t: spec.functional(v, **params), x, thr)
    raise AssertionError(entry)


@settings(max_examples=24, **SETTINGS)
@given(shape=shapes, dt=st.sampled_from(list(DTYPES)), which=st.integers(0, len(SHAPES) - 1),
       entry=st.sampled_from(["fire", "class-use_backend", "functional-set_backend"]),
       thr_kind=st.sampled_from(["python", "0-d", "per-element", "suffix"]),
       per_element_param=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_valid_surrogate_input_agrees_on_every_backend(shape, dt, which, entry, thr_kind,
                                                       per_element_param, seed):
    rng = np.random.default_rng(seed)
    spec, dtype = SHAPES[which], DTYPES[dt]
    params = _params(spec, rng, _suffix(shape, rng) if per_element_param else None)
    x = jnp.asarray(rng.normal(0, 2, shape), dtype)
    thr = {"python": float(rng.normal()), "0-d": jnp.asarray(rng.normal(), dtype),
           "per-element": jnp.asarray(rng.normal(0, 1, shape), dtype),
           "suffix": jnp.asarray(rng.normal(0, 1, _suffix(shape, rng)), dtype)}[thr_kind]
    ct = jnp.asarray(rng.normal(0, 1, shape), dtype)
    results = {}
    for backend in BACKENDS:
        y, pullback = _surrogate_entry(entry, spec, params, x, thr, backend)
        assert y.shape == shape and y.dtype == dtype, (backend, y.shape, y.dtype)
        results[backend] = (np.asarray(y, np.float32), *pullback(ct))
    ref, ker = results["reference"], results["interpret"]
    np.testing.assert_array_equal(ker[0], ref[0])  # spikes exactly
    want = np.asarray(x, np.float32) - (np.asarray(thr, np.float32) if entry == "fire" else 0)
    np.testing.assert_array_equal(ref[0], (want >= 0).astype(np.float32))
    _close(ker[1], ref[1], dt, "dH/dx")
    if entry == "fire":
        assert ker[2].shape == np.shape(thr)
        # dH/dθ is a sum over broadcast elements: compare with the summed tolerance
        n = max(1, int(np.prod(shape)) // max(1, int(np.prod(np.shape(thr)))))
        rtol, atol = GRAD_TOL[dt]
        np.testing.assert_allclose(np.asarray(ker[2], np.float64), np.asarray(ref[2], np.float64),
                                   rtol=rtol * 4, atol=atol * n * 4, err_msg="dH/dthreshold")


# -- valid input: neurons -------------------------------------------------------------------
# Interpret mode traces the statically unrolled time chunk: the default chunk of 32 costs
# ~15 s of CPU compilation per (T, N) pair, chunk 4 ~2 s. The classes take no config, so the
# heuristic is replaced for the test (chunking and prefetch are covered by test_neurons).
SMALL_SCAN = scan.ScanConfig(block=32, chunk=4, num_warps=1)


@contextlib.contextmanager
def small_scan_config():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan, "default_config", lambda T, N, dtype: SMALL_SCAN)
        yield


def _neuron_call(kind, backend, kw):
    kw = dict(kw)
    tau, decay = kw.pop("tau"), kw.pop("decay_input")
    if kind == "IF":
        return lambda x, v0: sn.IF(backend=backend, **kw)(x, v0)
    if kind == "LIF":
        return lambda x, v0: sn.LIF(tau=tau, decay_input=decay, backend=backend, **kw)(x, v0)
    if kind == "integrate_fire":
        return lambda x, v0: sn.integrate_fire(x, v0, backend=backend, **kw)
    return lambda x, v0: sn.lif(x, v0, tau=tau, decay_input=decay, backend=backend, **kw)


@settings(max_examples=6, **SETTINGS)
@given(T=st.integers(1, 40), shape=NEURON_SHAPES, dt=st.sampled_from(list(DTYPES)),
       kind=st.sampled_from(["IF", "LIF", "integrate_fire", "lif"]),
       which=st.integers(0, len(SHAPES) - 1), soft=st.booleans(), detach=st.booleans(),
       decay=st.booleans(), per_neuron=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_valid_neuron_input_agrees_on_every_backend(T, shape, dt, kind, which, soft, detach,
                                                    decay, per_neuron, seed):
    rng = np.random.default_rng(seed)
    spec, dtype = SHAPES[which], DTYPES[dt]
    pshape = _suffix(shape, rng) if per_neuron else ()
    kw = dict(
        tau=np.asarray(rng.uniform(1.2, 5.0, pshape), np.float32) if per_neuron else float(rng.uniform(1.2, 5.0)),
        v_threshold=np.asarray(rng.uniform(0.5, 1.5, pshape), np.float32),
        v_reset=None if soft else float(rng.uniform(-0.3, 0.2)),
        detach_reset=detach, decay_input=decay,
        surrogate=spec.cls(**_params(spec, rng)))
    x = jnp.asarray(rng.normal(0.45, 0.8, (T, *shape)), dtype)
    v0 = jnp.asarray(rng.uniform(-0.5, 0.9, shape), jnp.float32)
    ct_s = jnp.asarray(rng.normal(size=(T, *shape)), dtype)
    ct_v = jnp.asarray(rng.normal(size=shape), dtype)
    out = {}
    for backend in BACKENDS:
        with small_scan_config():
            (s, v), pullback = jax.vjp(_neuron_call(kind, backend, kw), x, v0)
        assert s.shape == x.shape and s.dtype == dtype and v.shape == shape and v.dtype == dtype
        out[backend] = (np.asarray(s, np.float32), v, *pullback((ct_s, ct_v)))
    ref, ker = out["reference"], out["interpret"]
    np.testing.assert_array_equal(ker[0], ref[0])  # spikes exactly
    _close(ker[1], ref[1], dt, "v_final", NEURON_TOL)
    _close(ker[2], ref[2], dt, "d x_seq", NEURON_TOL)
    _close(ker[3], ref[3], "float32", "d v0", NEURON_TOL)


# -- invalid input ----------------------------------------------------------------------------
SURROGATE_ENTRIES = ["class", "functional", "fire"]
NEURON_ENTRIES = ["IF", "LIF", "integrate_fire", "lif"]
ALL_FAULTS = {
    "x_complex", "x_bool", "x_string", "threshold_complex", "threshold_bool",
    "threshold_string", "threshold_shape", "param_shape", "param_complex", "param_bool",
    "backend_unknown", "surrogate_not", "tau_nonpositive", "T_zero", "x_seq_0d", "v0_shape",
}
APPLIES = {  # fault -> entries it applies to
    **{f: SURROGATE_ENTRIES + NEURON_ENTRIES for f in
       ("x_complex", "x_bool", "x_string", "param_shape", "param_complex", "param_bool",
        "backend_unknown")},
    **{f: ["fire"] + NEURON_ENTRIES for f in
       ("threshold_complex", "threshold_bool", "threshold_string", "threshold_shape",
        "surrogate_not")},
    "tau_nonpositive": ["LIF", "lif"],
    **{f: NEURON_ENTRIES for f in ("T_zero", "x_seq_0d", "v0_shape")},
}
assert set(APPLIES) == ALL_FAULTS
CASES = [(f, e) for f in sorted(ALL_FAULTS) for e in APPLIES[f]]
UNKNOWN_BACKENDS = st.text(min_size=0, max_size=8).filter(
    lambda s: s.strip().lower() not in dispatch.BACKENDS)
NOT_SURROGATES = [sf.Sigmoid, sf.sigmoid, "sigmoid", 4.0, lambda x: x, object()]


@st.composite
def invalid_calls(draw, cases=tuple(CASES)):
    """(fault, entry, thunk, exception type, words the message must contain)."""
    fault, entry = draw(st.sampled_from(cases))
    neuron = entry in NEURON_ENTRIES
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    shape = draw(hnp.array_shapes(min_dims=1 if neuron else 0, max_dims=4, min_side=1, max_side=4))
    dtype = DTYPES[draw(st.sampled_from(list(DTYPES)))]
    backend = draw(st.sampled_from(BACKENDS))
    spec = SHAPES[draw(st.integers(0, len(SHAPES) - 1))]
    params = _params(spec, rng)
    x = np.asarray(rng.normal(0.5, 1, shape)).astype(dtype)
    xname = "x_seq" if neuron else "x"
    thname = "v_threshold" if neuron else "threshold"
    args = dict(x=x, thr=0.5, params=params, backend=backend, surrogate=None, tau=2.0, v0=None)
    bad_shape = tuple(s + 1 for s in shape[1 if neuron else 0:]) or (2,)

    if fault in ("x_complex", "x_bool", "x_string"):
        bad = {"x_complex": (x + 1j * x, "complex"),
               "x_bool": (x > 0, "bool"),
               "x_string": (draw(st.sampled_from(["abc", np.asarray(["1.0", "2.0"])])), "real")}
        args["x"], word = bad[fault]
        exc, words = TypeError, [xname, word]
    elif fault.startswith("threshold_"):
        bad = {"threshold_complex": (TypeError, 1 + 2j, "complex"),
               "threshold_bool": (TypeError, np.ones(shape[-1:], bool), "bool"),
               "threshold_string": (TypeError, "1.0", "real"),
               "threshold_shape": (ValueError, np.ones(bad_shape, np.float32), "broadcast")}
        exc, args["thr"], word = bad[fault]
        words = [thname, word]
    elif fault.startswith("param_"):
        key = sorted(params)[int(rng.integers(len(params)))]
        bad = {"param_shape": (ValueError, np.ones(bad_shape, np.float32), "broadcast"),
               "param_complex": (TypeError, np.complex64(1 + 1j), "real"),
               "param_bool": (TypeError, np.ones(shape[-1:], bool), "real")}
        exc, args["params"][key], word = bad[fault]
        words = [f"{spec.name}.{key}", word]
    elif fault == "backend_unknown":
        args["backend"] = draw(UNKNOWN_BACKENDS)
        exc, words = ValueError, ["backend", "one of"]
    elif fault == "surrogate_not":
        args["surrogate"] = draw(st.sampled_from(NOT_SURROGATES))
        exc, words = TypeError, ["surrogate", "Surrogate instance"]
    elif fault == "tau_nonpositive":
        args["tau"] = draw(st.sampled_from([0.0, -0.0, -1.5, 0, -3, np.float32(0), np.float64(-2.0), float("nan")]))
        exc, words = ValueError, ["tau", "> 0"]
    elif fault == "T_zero":
        args["x"] = np.zeros((0, *shape[1:]), dtype)
        exc, words = ValueError, ["x_seq", "T >= 1"]
    elif fault == "x_seq_0d":
        args["x"] = draw(st.sampled_from([np.float32(1.0), np.asarray(0.5, dtype), 1.0, jnp.float32(2.0)]))
        exc, words = ValueError, ["x_seq", "time axis"]
    elif fault == "v0_shape":
        args["v0"] = np.ones(bad_shape, np.float32)
        exc, words = ValueError, ["v0", "broadcast"]
    else:
        raise AssertionError(fault)

    def thunk():
        a = args
        sur = a["surrogate"] if a["surrogate"] is not None else spec.cls(**a["params"])
        if entry == "class":
            with spikefuse.use_backend(a["backend"]):
                return spec.cls(**a["params"])(a["x"])
        if entry == "functional":
            with spikefuse.use_backend(a["backend"]):
                return spec.functional(a["x"], **a["params"])
        if entry == "fire":
            return spikefuse.fire(a["x"], a["thr"], sur, backend=a["backend"])
        common = dict(v_threshold=a["thr"], surrogate=sur, backend=a["backend"])
        if entry == "IF":
            return sn.IF(**common)(a["x"], a["v0"])
        if entry == "LIF":
            return sn.LIF(tau=a["tau"], **common)(a["x"], a["v0"])
        if entry == "integrate_fire":
            return sn.integrate_fire(a["x"], a["v0"], **common)
        return sn.lif(a["x"], a["v0"], tau=a["tau"], **common)

    return fault, entry, thunk, exc, words


def _check_invalid(case):
    fault, entry, thunk, exc, words = case
    with no_launch(), pytest.raises(exc) as info:
        thunk()
    msg = str(info.value)
    for word in words:
        assert word in msg, f"{fault} via {entry}: {word!r} not in {msg!r}"


@settings(max_examples=150, **SETTINGS)
@given(case=invalid_calls())
def test_invalid_input_raises_before_launch_and_names_the_argument(case):
    _check_invalid(case)


@pytest.mark.parametrize("fault, entry", CASES, ids=[f"{f}-{e}" for f, e in CASES])
def test_every_fault_and_entry_pair(fault, entry):
    """Every (fault, entry) pair, with random shapes, dtypes, backends, shapes of surrogate."""

    @settings(max_examples=4, database=None, **SETTINGS)
    @given(case=invalid_calls(cases=((fault, entry),)))
    def run(case):
        _check_invalid(case)

    run()


@pytest.mark.parametrize("entry", SURROGATE_ENTRIES + NEURON_ENTRIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_guard_trips_on_valid_input(entry, backend):
    """The guard is not vacuous: a valid call does reach a patched launch point."""
    x = np.ones((3, 2), np.float32)
    calls = {
        "class": lambda: sf.Sigmoid()(x),
        "functional": lambda: sf.sigmoid(x),
        "fire": lambda: spikefuse.fire(x, 0.5, sf.Sigmoid(), backend=backend),
        "IF": lambda: sn.IF(backend=backend)(x),
        "LIF": lambda: sn.LIF(backend=backend)(x),
        "integrate_fire": lambda: sn.integrate_fire(x, backend=backend),
        "lif": lambda: sn.lif(x, backend=backend),
    }
    with no_launch(), spikefuse.use_backend(backend), pytest.raises(Launched):
        calls[entry]()


def test_pallas_on_cpu_raises_backend_unavailable_not_a_fallback():
    x = np.ones((3, 2), np.float32)
    for call in (lambda: spikefuse.fire(x, 0.5, sf.Sigmoid(), backend="pallas"),
                 lambda: sn.lif(x, backend="pallas")):
        with pytest.raises(spikefuse.BackendUnavailableError, match="interpret"):
            jax.block_until_ready(call())


# -- regressions: gaps this suite found, fixed in spikefuse/_checks.py, surrogate/_base.py
# (grad_fn validates every parameter) and neurons/builtin.py (_check_positive) ----------
X = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)


@pytest.mark.parametrize("tau", [np.array(0.0), jnp.float32(0.0), np.array([1.0, -1.0]),
                                 np.array([np.nan, 2.0], np.float32)],
                         ids=["np-0d-zero", "jnp-zero", "per-neuron-negative", "per-neuron-nan"])
@pytest.mark.parametrize("entry", ["lif", "LIF"])
def test_gap_concrete_array_tau_nonpositive(entry, tau):
    with no_launch(), pytest.raises(ValueError, match="tau"):
        if entry == "lif":
            sn.lif(X, tau=tau, backend="reference")
        else:
            sn.LIF(tau=tau, backend="reference")(X)


@pytest.mark.parametrize("entry", ["class", "fire", "integrate_fire"])
def test_gap_list_parameter(entry):
    call = {"class": lambda a: sf.Sigmoid(alpha=a)(X),
            "fire": lambda a: spikefuse.fire(X, 0.0, sf.Sigmoid(alpha=a), backend="reference"),
            "integrate_fire": lambda a: sn.integrate_fire(X, surrogate=sf.Sigmoid(alpha=a),
                                                          backend="reference")[0]}[entry]
    try:  # either accepted like the equivalent array, or rejected naming the parameter
        got = call([1.0, 2.0])
    except (TypeError, ValueError) as err:
        assert "alpha" in str(err)
    else:
        np.testing.assert_array_equal(got, call(np.asarray([1.0, 2.0], np.float32)))


@pytest.mark.parametrize("entry", ["class", "functional", "fire"])
def test_gap_string_parameter_message(entry):
    call = {"class": lambda: sf.Sigmoid(alpha="fast")(X),
            "functional": lambda: sf.sigmoid(X, alpha="fast"),
            "fire": lambda: spikefuse.fire(X, 0.0, sf.Sigmoid(alpha="fast"), backend="reference")}
    with no_launch(), pytest.raises(TypeError, match=r"Sigmoid\.alpha"):
        call[entry]()


@pytest.mark.parametrize("entry", ["fire", "integrate_fire"])
def test_gap_none_parameter(entry):
    call = {"fire": lambda: spikefuse.fire(X, 0.0, sf.Sigmoid(alpha=None), backend="reference"),
            "integrate_fire": lambda: sn.integrate_fire(X, surrogate=sf.Sigmoid(alpha=None),
                                                        backend="reference")}
    with no_launch(), pytest.raises(TypeError, match="alpha"):
        call[entry]()


@pytest.mark.parametrize("entry", ["class", "fire", "integrate_fire"])
def test_gap_none_input_message(entry):
    call = {"class": lambda: sf.Sigmoid()(None), "fire": lambda: spikefuse.fire(None),
            "integrate_fire": lambda: sn.integrate_fire(None, backend="reference")}
    with no_launch(), pytest.raises(TypeError, match=r"\bx(_seq)?\b"):
        call[entry]()
