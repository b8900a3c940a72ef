"""Parity with the real braintools 0.4.0 (Python >= 3.12 only).

For all 18 shapes, on seeded random inputs and random valid parameters, in float32:
the forward is identical, and dH/dx, the jvp, d²H/dx² and ∂(dH/dx)/∂θ agree within 1e-5
relative; dH/dθ is exactly 0 for both libraries.

Runs where braintools 0.4.0 imports. Elsewhere the module is skipped, unless
SPIKEFUSE_REQUIRE_BRAINTOOLS=1 (CI sets it on 3.12): then a missing or different braintools
is a test failure, not a skip.

Behaviours the spec lists as fixes over braintools (§7: strongly typed parameters with
bf16/f16, broadcasting parameters, impossible parameters, complex/bool input, finite
gradients at extreme inputs, eager/jit weak types) are deliberately not compared here.
"""

from __future__ import annotations

import importlib
import inspect
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spikefuse.surrogate as sf

REQUIRED = os.environ.get("SPIKEFUSE_REQUIRE_BRAINTOOLS") == "1"
if not REQUIRED:
    pytest.importorskip(
        "braintools",
        minversion="0.4.0",
        reason="braintools 0.4.0 (Python >= 3.12) is needed for the parity tests",
    )

# the oracle lives in test_surrogate_formulas (tests/ is on sys.path, as for lowering.py)
from test_surrogate_formulas import NAMES, SPEC, kinks, numeric_params, sample_params  # noqa: E402

# Tolerance: 1e-5 relative (the bar). The two libraries write some formulas in
# algebraically equal but differently rounded forms (e.g. braintools' max(α·w − α|x|, 0) vs
# α·max(w − |x|, 0); exp(−x²/(2σ²)) vs exp(−(x/σ)²/2)), so where a value is itself near 0
# — at a zero crossing of g′ or its derivatives, or deep in a tail — the relative error of
# either is meaningless; an absolute floor of 1e-7 (about one float32 ulp of 1) covers that.
RTOL, ATOL = 1e-5, 1e-7


@pytest.fixture(scope="module")
def bt():
    """braintools.surrogate, which must be version 0.4.0."""
    import braintools

    assert braintools.__version__ == "0.4.0", f"parity is defined against 0.4.0, found {braintools.__version__}"
    return importlib.import_module("braintools.surrogate")


def seed_of(name, salt=0):
    return zlib.crc32(name.encode()) + salt


def _inputs(name, params, rng, n=64):
    """Seeded random inputs, kept 1e-3 away from kinks so both sides agree on the branch
    even where the two libraries round x·α differently."""
    x = rng.normal(0, 2.5, 4 * n).astype(np.float32)
    ks = kinks(name, params)
    if ks:
        x = x[np.min(np.abs(x[:, None] - np.asarray(ks)[None, :]), axis=1) > 1e-3]
    return jnp.asarray(x[:n])


def _param_sets(name, rng):
    sets = [dict(SPEC[name][1])] + [sample_params(name, rng) for _ in range(3)]
    if name == "SquarewaveFourierSeries":
        sets += [dict(sets[1], n=n) for n in (1, 4)]
    return sets


def _derivatives(make, params, x, t):
    """Everything compared, for one library, as functions of a constructor ``make``."""
    s = make(**params)
    out = {
        "H": s(x),
        "dH/dx": jax.vmap(jax.grad(s))(x),
        "jvp": jax.jvp(s, (x,), (t,))[1],
        "d2H/dx2": jax.vmap(jax.grad(jax.grad(s)))(x),
    }
    for key in numeric_params_of(make, params):

        def gprime(v, z, key=key):
            return jax.grad(make(**dict(params, **{key: v})))(z)

        p = params[key]
        out[f"d(dH/dx)/d[{key}]"] = jax.vmap(lambda z: jax.grad(gprime)(p, z))(x)
        out[f"dH/d[{key}]"] = jax.grad(lambda v: make(**dict(params, **{key: v}))(x).sum())(p)
    return out


def numeric_params_of(make, params):
    return [k for k in params if k in _NUMERIC[make.__name__]]  # n (Fourier) is structural


_NUMERIC = {name: set(numeric_params(name)) for name in NAMES}


def test_braintools_is_0_4_0(bt):
    import braintools

    assert braintools.__version__ == "0.4.0"


def test_same_names(bt):
    ours = {n for n in NAMES} | {SPEC[n][0] for n in NAMES} | {"Surrogate"}
    assert ours <= set(bt.__all__)
    assert {n for n in bt.__all__ if not n.startswith("_")} <= set(sf.__all__)


@pytest.mark.parametrize("name", NAMES)
def test_same_signatures_and_repr(bt, name):
    functional = SPEC[name][0]
    for ours, theirs in ((getattr(sf, name), getattr(bt, name)), (getattr(sf, functional), getattr(bt, functional))):
        a = [(p.name, p.default, p.kind) for p in inspect.signature(ours).parameters.values()]
        b = [(p.name, p.default, p.kind) for p in inspect.signature(theirs).parameters.values()]
        assert a == b
    assert repr(getattr(sf, name)()) == repr(getattr(bt, name)())
    p = sample_params(name, np.random.default_rng(seed_of(name, 9)))
    assert repr(getattr(sf, name)(**p)) == repr(getattr(bt, name)(**p))


@pytest.mark.parametrize("name", NAMES)
def test_parity(bt, name):
    rng = np.random.default_rng(seed_of(name))
    compiled = {}
    for params in _param_sets(name, rng):
        static = {k: v for k, v in params.items() if k not in _NUMERIC[name]}
        numeric = {k: v for k, v in params.items() if k in _NUMERIC[name]}
        x = _inputs(name, params, rng)
        t = jnp.asarray(rng.uniform(-2, 2, x.shape), jnp.float32)
        results = {}
        for lib, module in (("spikefuse", sf), ("braintools", bt)):
            key = (lib, tuple(sorted(static.items())))
            if key not in compiled:  # parameters are traced: one compile per library (and n)
                make = _Bind(getattr(module, name), static)
                compiled[key] = jax.jit(lambda p, x, t, make=make: _derivatives(make, p, x, t))
            results[lib] = compiled[key](numeric, x, t)
        ours, theirs = results["spikefuse"], results["braintools"]
        assert set(ours) == set(theirs)
        np.testing.assert_array_equal(ours["H"], theirs["H"], err_msg=f"forward {params}")
        assert ours["H"].dtype == theirs["H"].dtype == jnp.float32
        for what in ours:
            if what == "H":
                continue
            a, b = np.asarray(ours[what], np.float64), np.asarray(theirs[what], np.float64)
            assert ours[what].dtype == theirs[what].dtype, what
            if what.startswith("dH/d["):  # dH/dθ = 0 exactly, for both
                np.testing.assert_array_equal(a, 0, err_msg=f"spikefuse {what} {params}")
                np.testing.assert_array_equal(b, 0, err_msg=f"braintools {what} {params}")
                continue
            # the absolute floor is ATOL in units of the compared quantity's own scale
            scale = max(1.0, float(np.max(np.abs(b))))
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL * scale, err_msg=f"{what} {params}")


class _Bind:
    """``cls`` with some constructor arguments fixed (a static ``n``)."""

    def __init__(self, cls, fixed):
        self.cls, self.fixed = cls, fixed
        self.__name__ = cls.__name__

    def __call__(self, **kw):
        return self.cls(**self.fixed, **kw)
