"""Tests for spikefuse.neurons: the fused scan kernels (interpret mode) against the lax.scan
reference, the reference against finite differences of an independent float64 model, the
TPU scan kernels ("interpret_tpu") against the reference for every neuron, the cuda and tpu
lowerings (jax.export on CPU), validation, pytrees and the launch heuristic."""

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lowering import KERNEL_CALL, export_for
from neuron_oracle import oracle, sigmoid_gprime

import spikefuse
import spikefuse.neurons as sn
from spikefuse import surrogate as sg
from spikefuse.kernels import scan, tpu_scan
from spikefuse.neurons import engine, fused, reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Tanh(sg.Surrogate):
    """A user-defined surrogate: g'(x) = alpha/2 * (1 - tanh(alpha x)^2)."""

    def __init__(self, alpha=2.0):
        super().__init__()
        self.alpha = alpha

    def surrogate_grad(self, x):
        return self.alpha * 0.5 * (1 - jnp.tanh(self.alpha * x) ** 2)


SURROGATES = {
    "sigmoid": sg.Sigmoid(),
    "arctan": sg.Arctan(alpha=2.0),
    "pwquad": sg.PiecewiseQuadratic(alpha=0.8),
    "s2nn": sg.S2NN(),
    "fourier": sg.SquarewaveFourierSeries(n=3),
    "user_tanh": Tanh(alpha=1.5),
}

# Small blocks so that a few hundred neurons span several programs with a ragged last one;
# chunks shorter than T so that full chunks, the tail chunk and checkpoints all run.
CONFIGS = {
    "b64k4": scan.ScanConfig(block=64, chunk=4, num_warps=2),
    "b128k4pf": scan.ScanConfig(block=128, chunk=4, num_warps=4, prefetch=True),
    "b32k3": scan.ScanConfig(block=32, chunk=3, num_warps=1),
}

# Fused vs reference: spikes exactly; v_final and gradients (rtol, atol relative to the
# largest reference magnitude). bf16 outputs are rounded once from the same f32 state.
TOLERANCES = {"float32": (1e-5, 1e-5), "bfloat16": (2.0**-7, 2.0**-7)}

# A pairwise cover of neuron x reset x decay_input x detach_reset x surrogate x T x shape x
# config (T in {1, odd, > 32}; shapes of 300, 301 = 7*43 and 1110 = 2*3*5*37 neurons).
# (neuron, v_reset, decay_input, detach_reset, surrogate, T, shape, config, dtype)
CASES = [
    ("lif", 0.0, True, False, "sigmoid", 37, (7, 43), "b64k4", "float32"),
    ("lif", None, False, True, "arctan", 5, (300,), "b128k4pf", "float32"),
    ("if", -0.1, None, True, "pwquad", 37, (2, 3, 5, 37), "b128k4pf", "float32"),
    ("if", None, None, False, "user_tanh", 1, (7, 43), "b32k3", "float32"),
    ("lif", 0.2, False, False, "user_tanh", 37, (300,), "b32k3", "float32"),
    ("lif", None, True, True, "s2nn", 1, (2, 3, 5, 37), "b64k4", "float32"),
    ("if", 0.0, None, False, "fourier", 5, (300,), "b64k4", "float32"),
    ("lif", None, False, False, "pwquad", 37, (7, 43), "b128k4pf", "bfloat16"),
    ("if", None, None, True, "sigmoid", 37, (300,), "b64k4", "bfloat16"),
]


def _case_id(case):
    neuron, v_reset, decay, detach, sur, T, shape, cfg, dtype = case
    reset = "soft" if v_reset is None else "hard"
    decay = "" if decay is None else ("-decay" if decay else "-nodecay")
    det = "-detach" if detach else ""
    return f"{neuron}-{reset}{decay}{det}-{sur}-T{T}-{'x'.join(map(str, shape))}-{cfg}-{dtype}"


def _neuron_fn(neuron, v_reset, decay, detach, sur, **extra):
    kw = dict(v_threshold=1.0, v_reset=v_reset, detach_reset=detach,
              surrogate=SURROGATES[sur], **extra)
    if neuron == "lif":
        return lambda x, v0, **k: sn.lif(x, v0, tau=1.7, decay_input=decay, **kw, **k)
    return lambda x, v0, **k: sn.integrate_fire(x, v0, **kw, **k)


def _inputs(T, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.45, 0.8, size=(T, *shape)).astype(np.float32)
    v0 = rng.uniform(-0.5, 0.9, size=shape).astype(np.float32)
    ct_s = rng.normal(size=(T, *shape)).astype(np.float32)
    ct_v = rng.normal(size=shape).astype(np.float32)
    dt = jnp.dtype(dtype)
    return jnp.asarray(x, dt), jnp.asarray(v0), jnp.asarray(ct_s, dt), jnp.asarray(ct_v, dt)


def _vjp_jit(fn):
    """jit(x, v0, cts) -> (outputs, (dx, dv0)): one compilation of forward and backward."""

    def run(x, v0, ct_s, ct_v):
        out, pullback = jax.vjp(fn, x, v0)
        return out, pullback((ct_s, ct_v))

    return jax.jit(run)


def _close(actual, expected, dtype, what):
    rtol, atol = TOLERANCES[dtype]
    expected = np.asarray(expected, np.float64)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=atol * scale, err_msg=what)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_fused_matches_reference(case):
    neuron, v_reset, decay, detach, sur, T, shape, cfg, dtype = case
    fn = _neuron_fn(neuron, v_reset, decay, detach, sur)
    x, v0, ct_s, ct_v = _inputs(T, shape, dtype)
    (s_r, v_r), (dx_r, dv0_r) = _vjp_jit(
        lambda x, v0: fn(x, v0, backend="reference"))(x, v0, ct_s, ct_v)
    (s_f, v_f), (dx_f, dv0_f) = _vjp_jit(
        lambda x, v0: fn(x, v0, backend="interpret", config=CONFIGS[cfg]))(x, v0, ct_s, ct_v)
    assert s_f.dtype == x.dtype and s_f.shape == x.shape
    assert v_f.dtype == x.dtype and v_f.shape == shape
    assert dx_f.dtype == x.dtype and dv0_f.dtype == v0.dtype
    assert 0.02 < float(jnp.mean(s_r.astype(jnp.float32))) < 0.9  # spikes do happen
    np.testing.assert_array_equal(np.asarray(s_f, np.float32), np.asarray(s_r, np.float32))
    _close(v_f, v_r, dtype, "v_final")
    _close(dx_f, dx_r, dtype, "d x_seq")
    _close(dv0_f, dv0_r, "float32", "d v0")


@pytest.mark.parametrize("v0_kind", ["array", "scalar", "default"])
def test_parameter_gradients_and_v_seq(v0_kind):
    """Traced per-neuron threshold, scalar tau and v_reset, surrogate parameter, v0 given
    per neuron, as one traced scalar, or defaulted to v_reset; the membrane sequence."""
    T, shape = 37, (3, 101)
    x, v0, ct_s, ct_v = _inputs(T, shape, "float32", seed=1)
    v0 = {"array": v0, "scalar": jnp.float32(0.3), "default": None}[v0_kind]
    rng = np.random.default_rng(2)
    thr = jnp.asarray(rng.uniform(0.8, 1.2, size=(101,)).astype(np.float32))  # per neuron
    ct_seq = jnp.asarray(rng.normal(size=(T, *shape)).astype(np.float32))

    def make(backend, config=None):
        def f(x, v0, tau, thr, v_reset, alpha):
            return sn.lif(x, v0, tau=tau, v_threshold=thr, v_reset=v_reset,
                          surrogate=sg.Sigmoid(alpha=alpha), backend=backend, config=config,
                          return_v_seq=True)

        def run(*args):
            out, pullback = jax.vjp(f, *args)
            return out, pullback((ct_s, ct_v, ct_seq))

        return jax.jit(run)

    args = (x, v0, jnp.float32(1.6), thr, jnp.float32(0.1), jnp.float32(3.0))
    out_r, g_r = make("reference")(*args)
    out_f, g_f = make("interpret", CONFIGS["b128k4pf"])(*args)
    np.testing.assert_array_equal(out_f[0], out_r[0])
    for name, a, b in zip(["v_final", "v_seq"], out_f[1:], out_r[1:]):
        _close(a, b, "float32", name)
    for name, a, b in zip(["x", "v0", "tau", "thr", "v_reset", "alpha"], g_f, g_r):
        if a is None:
            assert b is None and v0_kind == "default", name
            continue
        assert a.shape == b.shape, name
        _close(a, b, "float32", f"d {name}")
    assert float(g_f[5]) == 0.0  # surrogate parameters get no gradient
    assert float(jnp.abs(g_f[2])) > 0 and float(jnp.abs(g_f[3]).max()) > 0


def test_cotangent_through_one_output_only():
    """A loss through v_final only or spikes only (the other cotangent is a symbolic zero)."""
    T, shape = 21, (300,)
    x, v0, _, _ = _inputs(T, shape, "float32", seed=3)
    fn = _neuron_fn("lif", 0.0, True, False, "sigmoid")
    # (output in the loss, differentiated arguments): v0 undifferentiated skips dv0.
    for pick, argnums in ((0, (0, 1)), (1, (0, 1)), (0, 0)):
        def loss(x, v0, backend, config=None):
            out = fn(x, v0, backend=backend, config=config)[pick]
            return jnp.sum(out * jnp.sin(jnp.arange(out.size).reshape(out.shape)))

        g_r = jax.jit(jax.grad(lambda x, v0: loss(x, v0, "reference"), argnums))(x, v0)
        g_f = jax.jit(jax.grad(lambda x, v0: loss(x, v0, "interpret", CONFIGS["b64k4"]),
                               argnums))(x, v0)
        for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_r)):
            _close(a, b, "float32", f"output {pick}, argnums {argnums}")


# ---------------------------------------------------------------------------------------
# The reference against finite differences of an independent float64 model


_FD_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import spikefuse.neurons as sn
    from spikefuse import surrogate as sg

    ALPHA = 1.0  # a wide sigmoid surrogate: g(u) = sigmoid(u), g'(u) = sigmoid(u)(1 - sigmoid(u))
    g = lambda u: 1.0 / (1.0 + np.exp(-ALPHA * u))

    def twin(x, v0, tau, thr, vr, neuron, soft, decay, detach, base_u, ct_s, ct_v):
        # The spec's equations in numpy float64, with each spike replaced by its smooth
        # twin s* + g(u) - g(u*) (u* = its value at the base point): equal to the spike at
        # the base point, derivative g'(u) -- the surrogate rule. The reset uses s* when
        # detached. Finite differences of this model are the surrogate gradient.
        v, loss = v0.copy(), 0.0
        for t in range(x.shape[0]):
            rest = v if soft else v - vr
            if neuron == "if":
                h = v + x[t]
            elif decay:
                h = v + (x[t] - rest) / tau
            else:
                h = v - rest / tau + x[t]
            u = h - thr
            s_star = (base_u[t] >= 0).astype(np.float64)
            s = s_star + g(u) - g(base_u[t])
            sr = s_star if detach else s
            v = h - thr * sr if soft else h * (1 - sr) + vr * sr
            loss += np.sum(ct_s[t] * s)
        return loss + np.sum(ct_v * v)

    def base_u(x, v0, tau, thr, vr, neuron, soft, decay):
        v, us = v0.copy(), []
        for t in range(x.shape[0]):
            rest = v if soft else v - vr
            h = v + x[t] if neuron == "if" else (v + (x[t] - rest) / tau if decay
                                                   else v - rest / tau + x[t])
            u = h - thr
            s = (u >= 0).astype(np.float64)
            v = h - thr * s if soft else h * (1 - s) + vr * s
            us.append(u)
        return np.array(us)

    results = []
    rng = np.random.default_rng(0)
    T, N = 7, 5
    for neuron, soft, decay, detach in [("lif", True, True, True), ("lif", False, False, False),
                                        ("if", False, None, True), ("if", True, None, False),
                                        ("lif", False, True, False)]:
        x = rng.normal(0.5, 0.7, size=(T, N))
        v0 = rng.uniform(-0.3, 0.5, size=N)
        ct_s, ct_v = rng.normal(size=(T, N)), rng.normal(size=N)
        tau, thr, vr = 1.7, 1.0, (None if soft else 0.1)
        sur = sg.Sigmoid(alpha=ALPHA)

        def model(x, v0, thr, *rest):
            kw = dict(v_threshold=thr, detach_reset=detach, surrogate=sur, backend="reference")
            if not soft:
                kw["v_reset"] = rest[-1]
            else:
                kw["v_reset"] = None
            if neuron == "lif":
                return sn.lif(x, v0, tau=rest[0], decay_input=decay, **kw)
            return sn.integrate_fire(x, v0, **kw)

        args = [jnp.asarray(x), jnp.asarray(v0), jnp.float64(thr)]
        if neuron == "lif":
            args.append(jnp.float64(tau))
        if not soft:
            args.append(jnp.float64(vr))
        (s, v), pullback = jax.vjp(model, *args)
        assert s.dtype == jnp.float64
        grads = pullback((jnp.asarray(ct_s), jnp.asarray(ct_v)))

        bu = base_u(x, v0, tau, thr, vr, neuron, soft, decay)
        margin = float(np.min(np.abs(bu)))
        def f(x_, v0_, thr_, tau_, vr_):
            return twin(x_, v0_, tau_, thr_, vr_, neuron, soft, decay, detach, bu, ct_s, ct_v)
        vals = dict(x=x, v0=v0, thr=thr, tau=tau, vr=vr)
        eps = 1e-6
        def fd(name):
            base = vals[name]
            arr = np.atleast_1d(np.array(base, np.float64))
            out = np.zeros_like(arr)
            for i in range(arr.size):
                plus, minus = arr.copy(), arr.copy()
                plus.flat[i] += eps
                minus.flat[i] -= eps
                cast = (lambda a: a) if np.ndim(base) else (lambda a: float(a[0]))
                kp = dict(vals, **{name: cast(plus)})
                km = dict(vals, **{name: cast(minus)})
                out.flat[i] = (f(kp["x"], kp["v0"], kp["thr"], kp["tau"], kp["vr"])
                               - f(km["x"], km["v0"], km["thr"], km["tau"], km["vr"])) / (2 * eps)
            return out.reshape(np.shape(base))
        names = ["x", "v0", "thr"] + (["tau"] if neuron == "lif" else []) + ([] if soft else ["vr"])
        for name, grad in zip(names, grads):
            expected = fd(name)
            err = float(np.max(np.abs(np.asarray(grad) - expected)))
            scale = float(np.max(np.abs(expected)))
            results.append(dict(case=f"{neuron}-{soft}-{decay}-{detach}", name=name, err=err,
                                scale=scale, margin=margin))
    print(json.dumps(results))
""")


def test_reference_matches_finite_differences_float64():
    proc = subprocess.run(
        [sys.executable, "-c", _FD_SCRIPT], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) >= 15
    for r in results:
        assert r["scale"] > 1e-3, r  # a gradient that is not trivially zero
        assert r["err"] <= 1e-6 * max(1.0, r["scale"]), r


# ---------------------------------------------------------------------------------------
# PLIF and ALIF against scans written here from shared/spec/neurons.md


SPEC_ALPHA = 2.5  # Sigmoid(alpha=2.5); the oracle's g' is written by hand


def spec_plif(x, v0, w, thr, v_reset, decay_input, detach):
    """PLIF as the spec says: LIF with 1/tau = sigmoid(w) = 1 / (1 + exp(-w))."""
    tau = 1.0 + jnp.exp(-w)  # 1 / sigmoid(w)
    soft = v_reset is None

    def step(v, x_t, p, fire):
        rest = v if soft else v - v_reset
        h = v + (x_t - rest) / tau if decay_input else v - rest / tau + x_t
        s = fire(h, thr)
        r = jax.lax.stop_gradient(s) if detach else s
        return s, (h - thr * r if soft else h * (1.0 - r) + v_reset * r)

    return oracle(step, x, v0, None, sigmoid_gprime(SPEC_ALPHA))


def spec_alif(x, v0, a0, tau, tau_a, beta, thr, v_reset, decay_input, detach):
    """ALIF as the spec says: theta = v_th + beta a; a = rho a + (1 - rho) s."""
    rho = jnp.exp(-1.0 / tau_a)
    soft = v_reset is None

    def step(state, x_t, p, fire):
        v, a = state
        rest = v if soft else v - v_reset
        h = v + (x_t - rest) / tau if decay_input else v - rest / tau + x_t
        theta = thr + beta * a
        s = fire(h, theta)
        r = jax.lax.stop_gradient(s) if detach else s
        v = h - theta * r if soft else h * (1.0 - r) + v_reset * r
        return s, (v, rho * a + (1.0 - rho) * s)

    return oracle(step, x, (v0, a0), None, sigmoid_gprime(SPEC_ALPHA))


# (neuron, v_reset, decay_input, detach_reset, T, per-channel parameter)
SPEC_CASES = [
    ("plif", 0.0, True, False, 13, True),
    ("plif", None, False, True, 3, False),
    ("alif", 0.0, True, False, 13, True),
    ("alif", None, True, True, 5, False),
    ("alif", -0.2, False, False, 1, True),
]


@pytest.mark.parametrize("case", SPEC_CASES, ids=lambda c: "-".join(map(str, c)))
def test_plif_and_alif_match_the_spec(case):
    neuron, v_reset, decay, detach, T, chan = case
    rng = np.random.default_rng(T)
    shape = (3, 37)
    x = jnp.asarray(rng.normal(0.8, 0.9, size=(T, *shape)).astype(np.float32))
    v0 = jnp.asarray(rng.uniform(-0.3, 0.8, size=shape).astype(np.float32))
    p_shape = (3, 1) if chan else ()
    sur = sg.Sigmoid(alpha=SPEC_ALPHA)
    if neuron == "plif":
        w = jnp.asarray(rng.uniform(-1.0, 1.0, size=p_shape).astype(np.float32))
        args = (x, v0, w, jnp.float32(1.0))

        def ours(backend, x, v0, w, thr):
            return sn.plif(x, v0, w=w, v_threshold=thr, v_reset=v_reset, decay_input=decay,
                           detach_reset=detach, surrogate=sur, backend=backend,
                           config=CONFIGS["b32k3"])

        def spec(x, v0, w, thr):
            return spec_plif(x, v0, w, thr, v_reset, decay, detach)
    else:
        beta = jnp.asarray(rng.uniform(0.5, 2.0, size=p_shape).astype(np.float32))
        a0 = jnp.asarray(rng.uniform(0.0, 0.3, size=shape).astype(np.float32))
        args = (x, v0, a0, jnp.float32(1.7), jnp.float32(6.0), beta, jnp.float32(0.9))

        def ours(backend, x, v0, a0, tau, tau_a, beta, thr):
            return sn.alif(x, v0, a0, tau=tau, tau_a=tau_a, beta=beta, v_threshold=thr,
                           v_reset=v_reset, decay_input=decay, detach_reset=detach,
                           surrogate=sur, backend=backend, config=CONFIGS["b32k3"])

        def spec(*a):
            return spec_alif(*a, v_reset, decay, detach)

    def value_and_grads(fn):
        def loss(*a):
            s, state = fn(*a)
            return jnp.sum(s * jnp.arange(1.0, T + 1)[:, None, None]) + sum(
                jnp.sum(v * jnp.cos(jnp.arange(v.size).reshape(v.shape)))
                for v in jax.tree.leaves(state))

        return jax.jit(lambda *a: (fn(*a), jax.grad(loss, tuple(range(len(a))))(*a)))

    (s_w, state_w), grads_w = value_and_grads(spec)(*args)
    assert 0.02 < float(s_w.mean()) < 0.9
    for backend in ("reference", "interpret"):
        (s, state), grads = value_and_grads(functools.partial(ours, backend))(*args)
        np.testing.assert_array_equal(s, s_w, err_msg=backend)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state_w)):
            _close(a, b, "float32", f"{backend}: final state")
        for i, (a, b) in enumerate(zip(grads, grads_w)):
            assert a.shape == b.shape
            _close(a, b, "float32", f"{backend}: gradient {i}")


def test_plif_and_alif_classes():
    x = jnp.asarray(np.random.default_rng(7).normal(0.8, 1, size=(9, 4, 5)), jnp.float32)
    neuron = sn.PLIF(init_tau=3.0, backend="reference")
    assert neuron.w == pytest.approx(-np.log(2.0))
    np.testing.assert_allclose(neuron.tau, 3.0, rtol=1e-6)
    s, v = neuron(x)
    s_f, v_f = sn.plif(x, w=neuron.w, backend="reference")
    np.testing.assert_array_equal(s, s_f)
    # jax.grad of a model holding a PLIF reaches w (scalar) and a per-channel w.
    model = {"neuron": neuron, "scale": 1.0}
    grads = jax.grad(lambda m: m["neuron"](x * m["scale"])[0].sum())(model)
    assert isinstance(grads["neuron"], sn.PLIF) and float(grads["neuron"].w) != 0.0
    per_channel = sn.PLIF(init_tau=jnp.full((5,), 2.0), backend="reference")
    g = jax.grad(lambda n: n(x)[1].sum())(per_channel)
    assert g.w.shape == (5,)
    assert repr(sn.PLIF()).startswith("PLIF(w=0.0, v_threshold=1.0")
    with pytest.raises(ValueError, match="init_tau"):
        sn.PLIF(init_tau=1.0)
    alif_neuron = sn.ALIF(tau=3.0, tau_a=10.0, beta=0.5, backend="reference")
    s, (v, a), (v_seq, a_seq) = alif_neuron(x, return_states=True)
    np.testing.assert_array_equal(a_seq[-1], a)
    assert jax.tree_util.tree_flatten(alif_neuron)[0][:3] == [3.0, 10.0, 0.5]
    with pytest.raises(ValueError, match="tau_a"):
        sn.ALIF(tau_a=0.0)
    with pytest.raises(ValueError, match="beta"):
        sn.alif(x, beta=-1.0)


# ---------------------------------------------------------------------------------------
# The TPU scan kernels ("interpret_tpu") against the reference, every neuron

TPU_K = 4
# Blocks of 16 rows x 128 lanes: 20 x 150 neurons are 2 x 2 blocks, both ragged.
TPU_CONFIG = tpu_scan.TpuScanConfig(chunk=TPU_K, block_rows=16, block_cols=128)
TPU_SHAPE = (20, 150)


def _two_state_step(state, x, p, fire):
    """A user's step with two states (an adaptive threshold with its own decay)."""
    v, a = state
    h = v * p["decay"] + x
    theta = p["thr"] + p["beta"] * a
    s = fire(h, theta)
    return s, (h - theta * s, p["rho"] * a + (1.0 - p["rho"]) * s)


def _tpu_problem(neuron, v_reset, decay, detach, rng):
    """(f(x, *args, backend) -> (spikes, state), args): each neuron through its public
    functional, with its numeric parameters as traced, differentiated arguments."""
    u = lambda lo, hi, size=(): jnp.asarray(rng.uniform(lo, hi, size).astype(np.float32))  # noqa: E731
    chan = (TPU_SHAPE[0], 1)
    kw = dict(v_reset=v_reset, detach_reset=detach, surrogate=sg.Sigmoid(alpha=3.0),
              config=TPU_CONFIG)
    v0 = u(-0.3, 0.8, TPU_SHAPE)
    if neuron == "if":
        return (lambda x, v0, thr, backend: sn.integrate_fire(
            x, v0, v_threshold=thr, backend=backend, **kw)), (v0, u(0.8, 1.2, chan))
    if neuron == "lif":
        return (lambda x, v0, tau, thr, backend: sn.lif(
            x, v0, tau=tau, v_threshold=thr, decay_input=decay, backend=backend, **kw)), \
            (v0, u(1.5, 3.0, chan), u(0.8, 1.2))
    if neuron == "plif":
        return (lambda x, v0, w, backend: sn.plif(
            x, v0, w=w, decay_input=decay, backend=backend, **kw)), (v0, u(-1.0, 1.0, chan))
    if neuron == "alif":
        return (lambda x, v0, a0, tau, beta, backend: sn.alif(
            x, v0, a0, tau=tau, tau_a=6.0, beta=beta, decay_input=decay, backend=backend,
            **kw)), (v0, u(0.0, 0.3, TPU_SHAPE), u(1.5, 3.0), u(0.5, 1.5, chan))

    def user(x, v0, a0, beta, backend):
        params = {"decay": 0.8, "thr": 1.0, "beta": beta, "rho": 0.9}
        return engine.run(_two_state_step, x, (v0, a0), params, backend=backend,
                          surrogate=sg.Sigmoid(alpha=3.0), config=TPU_CONFIG)

    return user, (v0, u(0.0, 0.3, TPU_SHAPE), u(0.5, 1.5, chan))


# (neuron, v_reset, decay_input, detach_reset, T, dtype): every neuron and variant, T over
# {1, K-1, K, K+1, 3K+5}, f32 and bf16 (a pairwise cover, not the product).
TPU_CASES = [
    ("if", 0.0, None, False, 1, "float32"),
    ("if", None, None, True, 5, "bfloat16"),
    ("lif", 0.0, True, False, 3, "float32"),
    ("lif", None, False, True, 4, "float32"),
    ("lif", 0.1, False, False, 17, "bfloat16"),
    ("lif", None, True, False, 5, "float32"),
    ("plif", 0.0, True, True, 17, "float32"),
    ("alif", 0.0, True, False, 5, "float32"),
    ("alif", None, False, True, 1, "float32"),
    ("user2", None, None, None, 17, "float32"),
    ("user2", None, None, None, 3, "bfloat16"),
]


@pytest.mark.parametrize("case", TPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_interpret_tpu_matches_reference(case):
    """Spikes equal; final states and every gradient (reverse mode to x_seq, the initial
    states and the parameters; forward mode) within 1e-5 of the largest magnitude (f32)."""
    neuron, v_reset, decay, detach, T, dtype = case
    rng = np.random.default_rng(T + len(neuron))
    fn, args = _tpu_problem(neuron, v_reset, decay, detach, rng)
    x = jnp.asarray(rng.normal(0.7, 0.8, (T, *TPU_SHAPE)).astype(np.float32), dtype)
    args = (x, *args)
    out_shape = jax.eval_shape(lambda *a: fn(*a, backend="reference"), *args)
    cts = jax.tree.map(lambda o: jnp.asarray(rng.normal(size=o.shape), o.dtype), out_shape)
    tangents = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), args)

    def both(backend):
        f = functools.partial(fn, backend=backend)

        def run(*a):
            out, pullback = jax.vjp(f, *a)
            return out, pullback(cts), jax.jvp(f, a, tangents)[1]

        return jax.jit(run)(*args)

    (s_r, fin_r), grads_r, tan_r = both("reference")
    (s_t, fin_t), grads_t, tan_t = both("interpret_tpu")
    assert 0.02 < float(jnp.mean(s_r.astype(jnp.float32))) < 0.9  # spikes do happen
    assert s_t.dtype == x.dtype and s_t.shape == x.shape
    np.testing.assert_array_equal(np.asarray(s_t, np.float32), np.asarray(s_r, np.float32))
    for what, got, want in (("final state", fin_t, fin_r), ("reverse mode", grads_t, grads_r),
                            ("forward mode", tan_t, tan_r)):
        for i, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want),
                                       strict=True)):
            assert g.shape == w.shape and g.dtype == w.dtype, (what, i)
            # bf16 in the input's dtype (x_seq, its gradient, final states), f32 elsewhere
            _close(g, w, dtype if w.dtype == x.dtype else "float32", f"{what} {i}")


# ---------------------------------------------------------------------------------------
# GPU lowering, checked on CPU


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("variant", ["lif-hard-sigmoid-prefetch", "if-soft-user-default",
                                     "plif-soft-arctan", "alif-hard-sigmoid"])
def test_forward_and_gradient_lower(variant, dtype, platform):
    """"pallas" lowers to the forward and BPTT kernels of the platform (Triton for cuda,
    Mosaic for tpu; a GPU config's chunk K carries over to the TPU kernels); T = 37 leaves
    a ragged chunk, 1000 neurons per row a ragged block on both."""
    T, shape = 37, (3, 1000)
    dt = jnp.dtype(dtype)
    config = scan.ScanConfig(block=128, chunk=8, num_warps=4, prefetch=True)
    if variant.startswith("lif"):
        def fn(x, v0, tau):
            return sn.lif(x, v0, tau=tau, backend="pallas", config=config)
    elif variant.startswith("if"):
        def fn(x, v0, tau):
            return sn.integrate_fire(x, v0, v_reset=None, surrogate=Tanh(),
                                     backend="pallas")
    elif variant.startswith("plif"):
        def fn(x, v0, w):
            return sn.plif(x, v0, w=w, v_reset=None, surrogate=sg.Arctan(), backend="pallas")
    else:
        def fn(x, v0, tau):
            s, (v, a) = sn.alif(x, v0, tau=tau, backend="pallas", config=config)
            return s, v + a

    def fwd_bwd(x, v0, tau):
        (s, v), pullback = jax.vjp(fn, x, v0, tau)
        return s, v, pullback((s, v))

    avals = (jax.ShapeDtypeStruct((T, *shape), dt), jax.ShapeDtypeStruct(shape, jnp.float32),
             jax.ShapeDtypeStruct((), jnp.float32))
    prefix = "spikefuse_tpu_scan" if platform == "tpu" else "spikefuse_scan"
    forward = export_for(platform, lambda x, v0, tau: fn(x, v0, tau), *avals)
    assert f"{prefix}_fwd" in forward and f"{prefix}_bwd" not in forward
    both = export_for(platform, fwd_bwd, *avals)
    assert f"{prefix}_fwd" in both and f"{prefix}_bwd" in both
    other = KERNEL_CALL["tpu" if platform == "cuda" else "cuda"]
    assert both.count(KERNEL_CALL[platform]) == 2 and other not in both


def test_pallas_forced_on_cpu_does_not_fall_back():
    x = jnp.ones((3, 4))
    with pytest.raises(Exception, match="(?i)interpret|cpu"):
        jax.block_until_ready(sn.lif(x, backend="pallas"))


# ---------------------------------------------------------------------------------------
# Validation (before any kernel or scan runs)


@pytest.fixture
def no_compute(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a kernel or scan ran before validation")

    for mod, name in [(fused, "forward"), (engine, "run_reference"),
                      (scan, "scan_forward"), (scan, "scan_backward")]:
        monkeypatch.setattr(mod, name, boom)


@pytest.mark.parametrize("bad, exc, match", [
    (dict(x_seq=np.zeros((3, 2), np.int32)), TypeError, "x_seq"),
    (dict(x_seq=np.zeros((3, 2), bool)), TypeError, "x_seq"),
    (dict(x_seq=np.zeros((3, 2), np.complex64)), TypeError, "x_seq"),
    (dict(x_seq=np.float32(1.0)), ValueError, "x_seq"),
    (dict(x_seq=np.zeros((0, 2), np.float32)), ValueError, "x_seq"),
    (dict(x_seq="abc"), TypeError, "x_seq"),
    (dict(tau=0.0), ValueError, "tau"),
    (dict(tau=-2), ValueError, "tau"),
    (dict(tau=1j), TypeError, "tau"),
    (dict(v_threshold=1 + 1j), TypeError, "v_threshold"),
    (dict(v_threshold=np.ones((4, 2))), ValueError, "v_threshold"),
    (dict(v_reset=True), TypeError, "v_reset"),
    (dict(v0=np.ones(3)), ValueError, "v0"),
    (dict(v0=np.ones(2, bool)), TypeError, "v0"),
    (dict(surrogate="sigmoid"), TypeError, "surrogate"),
    (dict(surrogate=sg.Sigmoid(alpha=np.ones((3, 2)))), ValueError, "Sigmoid"),
    (dict(detach_reset=1), TypeError, "detach_reset"),
    (dict(decay_input="yes"), TypeError, "decay_input"),
    (dict(return_v_seq=None), TypeError, "return_v_seq"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(config="fast"), TypeError, "config"),
    (dict(unroll=0), ValueError, "unroll"),
])
@pytest.mark.parametrize("backend", ["interpret", "reference"])
def test_validation_raises_before_compute(no_compute, bad, exc, match, backend):
    kw = dict(x_seq=np.zeros((3, 2), np.float32), backend=backend)
    kw.update(bad)
    x = kw.pop("x_seq")
    with pytest.raises(exc, match=match):
        sn.lif(x, **kw)


def test_class_validation_names_argument():
    with pytest.raises(ValueError, match="tau"):
        sn.LIF(tau=0.0)
    with pytest.raises(TypeError, match="detach_reset"):
        sn.IF(detach_reset="no")
    with pytest.raises(TypeError, match="surrogate"):
        sn.LIF(surrogate=lambda x: x)

    class NoGrad(sg.Surrogate):
        pass

    with pytest.raises(NotImplementedError, match="surrogate_grad"):
        sn.IF(surrogate=NoGrad())


def test_index_limit_is_checked_before_tracing_kernels(no_compute):
    big = jax.ShapeDtypeStruct((2**16, 2**15), jnp.float32)
    with pytest.raises(ValueError, match="int32"):
        jax.eval_shape(lambda x: sn.lif(x, backend="pallas"), big)


# ---------------------------------------------------------------------------------------
# API: classes, pytrees, dispatch, shapes


def test_classes_equal_functionals_and_repr():
    x = jnp.asarray(np.random.default_rng(4).normal(0.5, 1, size=(6, 2, 3)), jnp.float32)
    a = sn.LIF(tau=3.0, v_reset=None, decay_input=False, backend="reference")(x, None, True)
    b = sn.lif(x, tau=3.0, v_reset=None, decay_input=False, backend="reference",
               return_v_seq=True)
    for u, w in zip(a, b):
        np.testing.assert_array_equal(u, w)
    np.testing.assert_array_equal(a[2][-1], a[1])  # v_seq ends at v_final
    assert repr(sn.IF()) == ("IF(v_threshold=1.0, v_reset=0.0, detach_reset=False, "
                             "surrogate=Sigmoid(alpha=4.0), backend=None)")
    assert repr(sn.LIF()) == ("LIF(tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, "
                              "detach_reset=False, surrogate=Sigmoid(alpha=4.0), backend=None)")


def test_neuron_is_a_pytree_with_traced_parameters():
    x = jnp.asarray(np.random.default_rng(5).normal(0.6, 1, size=(9, 4)), jnp.float32)
    neuron = sn.LIF(tau=2.0, v_reset=None, backend="reference")
    leaves, treedef = jax.tree_util.tree_flatten(neuron)
    assert leaves == [2.0, 1.0, 4.0]  # tau, v_threshold, Sigmoid.alpha (soft: no v_reset)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert repr(rebuilt) == repr(neuron)

    @jax.jit
    def loss(neuron, x):
        s, v = neuron(x)
        return jnp.sum(s * jnp.arange(4.0)) + jnp.sum(v ** 2)

    grads = jax.grad(loss)(neuron, x)
    assert isinstance(grads, sn.LIF)
    assert float(grads.surrogate.alpha) == 0.0
    assert float(grads.tau) != 0.0 and float(grads.v_threshold) != 0.0
    # A new parameter value is a new traced operand, not a recompilation.
    loss(sn.LIF(tau=5.0, v_reset=None, backend="reference"), x)
    assert loss._cache_size() == 1


def test_fused_under_vmap_and_new_values_do_not_recompile():
    x = jnp.asarray(np.random.default_rng(6).normal(0.5, 1, size=(3, 9, 70)), jnp.float32)
    config = CONFIGS["b64k4"]

    def run(backend, x, tau):
        kw = dict(config=config) if backend != "reference" else {}
        return jax.vmap(lambda x: sn.lif(x, tau=tau, backend=backend, **kw))(x)

    fused = jax.jit(lambda x, tau: run("interpret", x, tau))
    for tau in (2.0, 3.5):  # a traced tau: one compilation for both values
        for a, b in zip(fused(x, tau), run("reference", x, tau)):
            np.testing.assert_array_equal(a, b)
    assert fused._cache_size() == 1


def test_auto_backend_is_reference_on_cpu(monkeypatch):
    calls = []
    real = engine.run_reference
    monkeypatch.setattr(engine, "run_reference", lambda *a: calls.append(1) or real(*a))
    sn.integrate_fire(jnp.ones((2, 3)))
    assert calls == [1]


def test_zero_neurons_and_scalar_neuron():
    s, v = sn.lif(jnp.ones((4, 0, 3)), backend="interpret")
    assert s.shape == (4, 0, 3) and v.shape == (0, 3)
    x = jnp.asarray([0.6, 0.6, 0.6, 2.5], jnp.float32)  # shape [T]: one neuron
    ref = sn.integrate_fire(x, backend="reference")
    fused = sn.integrate_fire(x, backend="interpret")
    np.testing.assert_array_equal(fused[0], ref[0])
    np.testing.assert_array_equal(fused[0], [0.0, 1.0, 0.0, 1.0])
    assert fused[1].shape == ()


# ---------------------------------------------------------------------------------------
# Launch configuration


def test_default_config_heuristic():
    # (T, N) -> (block, chunk, num_warps) for f32 and bf16: the H200-tuned table in the
    # heuristic's docstring (large N: K = 8, two bf16 neurons per thread; small N: K = 32).
    expected = {
        (8, 4 << 20): ((128, 8, 4), (256, 8, 4)),
        (32, 4 << 20): ((128, 8, 4), (256, 8, 4)),
        (128, 1 << 20): ((128, 8, 4), (256, 8, 4)),
        (64, 65536): ((64, 32, 2), (64, 32, 2)),
        (1024, 4096): ((32, 32, 1), (32, 32, 1)),
        (5, 10): ((32, 5, 1), (32, 5, 1)),
    }
    for (T, N), by_dtype in expected.items():
        for dtype, want in zip((jnp.float32, jnp.bfloat16), by_dtype):
            cfg = scan.default_config(T, N, dtype)
            assert (cfg.block, cfg.chunk, cfg.num_warps) == want, (T, N, dtype, cfg)
    assert scan.default_config(1024, 4096, jnp.float32).prefetch
    assert not scan.default_config(32, 4 << 20, jnp.float32).prefetch
    with pytest.raises(ValueError, match="block"):
        scan.ScanConfig(block=48, chunk=8, num_warps=1)
    assert scan.residual_bytes_per_step(32, 32) == 0.0
    assert scan.residual_bytes_per_step(1024, 32) == pytest.approx(31 * 4 / 1024)


def test_caller_config_is_used_unchanged(monkeypatch):
    seen = []
    real = scan.scan_forward

    def spy(*args, config, **kwargs):
        seen.append(config)
        return real(*args, config=config, **kwargs)

    monkeypatch.setattr(scan, "scan_forward", spy)
    monkeypatch.setattr(scan, "default_config", lambda *a: pytest.fail("heuristic called"))
    config = scan.ScanConfig(block=32, chunk=3, num_warps=1)
    sn.lif(jnp.ones((5, 40)), backend="interpret", config=config)
    assert seen == [config]


def test_default_unroll():
    assert reference.default_unroll(1000, "cpu") == 1
    assert reference.default_unroll(1000, "gpu") == 32
    assert reference.default_unroll(5, "gpu") == 5
    assert reference.default_unroll(128, "gpu", N=1 << 20) == 8  # measured on the H200
    assert reference.default_unroll(32, "gpu", N=4 << 20) == 32
    assert reference.default_unroll(128, "cpu", N=1 << 20) == 1


def test_pallas_on_cpu_is_strict():
    # Forcing "pallas" where Triton cannot run raises spikefuse's error (no silent fallback,
    # no raw jax error), eagerly and under jit(grad); exporting for cuda still works (above).
    x = jnp.ones((3, 40), jnp.float32)
    with pytest.raises(spikefuse.BackendUnavailableError, match="interpret"):
        sn.LIF(backend="pallas")(x)
    with pytest.raises(spikefuse.BackendUnavailableError):
        jax.jit(jax.grad(lambda x: sn.lif(x, backend="pallas")[0].sum()))(x)
