"""``examples/adex.py`` and ``examples/izhikevich.py``: user-written steps on the public
engine, run as a user would, against their own ``lax.scan`` (``neuron_oracle``); the scripts
run; both steps lower for cuda."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax  # noqa: F401  (the AdEx example needs it: a missing dependency fails here)
import pytest
from lowering import export_for_cuda
from neuron_oracle import gaussian_gprime, oracle, sigmoid_gprime

from spikefuse.kernels import scan
from spikefuse.neurons import engine, multistep

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = scan.ScanConfig(block=32, chunk=4, num_warps=1)  # several blocks and chunks


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


adex = _load("adex")
izhikevich = _load("izhikevich")


def _problems():
    rng = np.random.default_rng(0)
    # AdEx: 70 neurons, currents that make most of them fire within 40 steps.
    adex_x = jnp.asarray(rng.uniform(-10.0, 40.0, (40, 70)), jnp.float32)
    # Izhikevich: 2 classes x 35 neurons, per-class parameters, 60 steps (30 ms).
    izh_x = jnp.asarray(rng.uniform(8.0, 25.0, (60, 2, 35)), jnp.float32)
    table = np.array([izhikevich.CLASSES["regular spiking"],
                      izhikevich.CLASSES["fast spiking"]], np.float32)
    izh_p = {k: jnp.asarray(table[:, i:i + 1]) for i, k in enumerate("abcd")}
    return {
        "adex": (adex.adex_step, adex_x, adex.INIT, None, adex.SURROGATE,
                 gaussian_gprime(0.5, 0.5)),
        "izhikevich": (izhikevich.izhikevich_step, izh_x, izhikevich.init_state(izh_p), izh_p,
                       izhikevich.SURROGATE, sigmoid_gprime(0.5)),
    }


PROBLEMS = _problems()


def _close(actual, expected, what, tol=1e-5):
    expected = np.asarray(expected, np.float64)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol,
                               atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("name", PROBLEMS)
def test_example_step_matches_its_own_scan(name):
    step, x, init, params, surrogate, gprime = PROBLEMS[name]

    def loss(fn):
        def f(x, params):
            s, state = fn(x, params)
            w = jnp.linspace(0.5, 1.5, s.shape[0]).reshape((-1,) + (1,) * (s.ndim - 1))
            return jnp.sum(s * w) + sum(jnp.sum(jnp.sin(v / 10.0))
                                        for v in jax.tree.leaves(state))

        return jax.jit(jax.value_and_grad(f, (0, 1)))

    want_s, want_state = oracle(step, x, init, params, gprime)
    want = loss(lambda x, p: oracle(step, x, init, p, gprime))(x, params)
    assert 0.02 < float(want_s.mean()) < 0.5  # the neurons fire
    for backend in ("reference", "interpret"):
        def run(x, p, backend=backend):
            if backend == "reference":  # the public entry point, as a user calls it
                return multistep(step, x, init, p, surrogate=surrogate, backend=backend)
            return engine.run(step, x, init, p, surrogate=surrogate, backend=backend,
                              config=CONFIG)  # small blocks: several per interpreted call

        s, state = run(x, params)
        np.testing.assert_array_equal(s, want_s, err_msg=backend)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want_state)):
            _close(a, b, f"{backend}: final state")
        got = loss(run)(x, params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            _close(a, b, f"{backend}: loss and gradients")


def test_adex_fit_reduces_the_rate_error():
    lines = []
    metrics = adex.main(["--neurons", "64", "--steps", "100", "--iterations", "20",
                         "--backend", "reference"], log=lines.append)
    assert metrics["error_after"] < 0.6 * metrics["error_before"], metrics
    assert any("mean |rate - target|" in line for line in lines)


def test_izhikevich_rates_rise_with_the_current():
    metrics = izhikevich.main(["--steps", "400", "--backend", "reference"], log=lambda *_: None)
    counts = metrics["counts"]  # [classes, currents], currents increasing
    assert counts.shape == (4, 3) and counts.min() > 0
    assert np.all(np.diff(counts, axis=1) > 0), counts
    # Fast spiking outpaces regular spiking at every current (Izhikevich 2003, fig. 2).
    assert np.all(counts[3] > counts[0]), counts


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_example_steps_lower_for_cuda(name, dtype):
    step, x, init, params, surrogate, _ = PROBLEMS[name]
    config = scan.ScanConfig(block=128, chunk=8, num_warps=4, prefetch=True)

    def fwd_bwd(x):
        out, pullback = jax.vjp(lambda x: engine.run(step, x, init, params,
                                                     surrogate=surrogate, backend="pallas",
                                                     config=config), x)
        return out, pullback(jax.tree.map(jnp.ones_like, out))

    text = export_for_cuda(fwd_bwd, jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype)))
    assert text.count("__gpu$xla.gpu.triton") >= 2  # the forward and the BPTT kernel
