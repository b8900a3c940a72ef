"""Every shape under every JAX transformation, in every float dtype, with finite gradients.

Expected values are the float64 closed forms of ``test_surrogate_formulas`` (spec §5), and
their central finite differences for second derivatives; nothing comes from spikefuse.

To keep compile time down, each test jits one function that applies the whole list of
transformations to one shape (a surrogate is a pytree argument, so several parameter sets
reuse the compiled code), then checks each result by name.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spikefuse.surrogate as sf
from spikefuse.surrogate import registry

# the oracle lives in test_surrogate_formulas (tests/ is on sys.path, as for lowering.py)
from test_surrogate_formulas import (
    NAMES,
    SPEC,
    assert_matches_oracle,
    away_from_kinks,
    grad64,
    kinks,
    numeric_params,
    peak,
    sample_params,
)


@pytest.fixture(autouse=True)
def _x64_does_not_leak():
    before = bool(jax.config.jax_enable_x64)
    yield
    assert bool(jax.config.jax_enable_x64) == before


def cls_of(name):
    return getattr(sf, name)


def seed_of(name, salt=0):
    return zlib.crc32(name.encode()) + salt


# -- finite differences of the closed form (float64) ----------------------------------------
def _stencil(f, h):
    return (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)


def d2x64(name, x, params, h=1e-4):
    """d g′/dx by a 5-point central difference of the closed form."""
    x = np.asarray(x, np.float64)
    return _stencil(lambda d: grad64(name, x + d, params), h)


def dparam64(name, x, params, key, h=1e-4):
    """∂g′/∂key by a 5-point central difference of the closed form."""
    x = np.asarray(x, np.float64)
    return _stencil(lambda d: grad64(name, x, dict(params, **{key: params[key] + d})), h)


def x_points(name, params, n=24, seed=0, margin=0.05):
    """Random points in [-4, 4] at least ``margin`` from every kink (and from 0)."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(-4, 4, 4 * n))
    x = away_from_kinks(name, params, x, margin)
    x = x[np.abs(x) > margin]
    return x[:n]


# -- the transformation matrix (float32) -----------------------------------------------------
T_STEPS, BATCH = 5, 3


def _suite(name):
    """All transformations of one shape, as one function of (surrogate, data) to jit."""
    functional = getattr(sf, SPEC[name][0])
    first = numeric_params(name)[0]
    static = {k: v for k, v in SPEC[name][1].items() if k not in numeric_params(name)}

    def run(s, batched, first_values, x, ct, x2d, xs_time):
        H = s
        out = {"forward": H(x), "jit": jax.jit(H)(x)}
        out["grad"] = jax.grad(lambda x: jnp.sum(H(x) * ct))(x)
        out["jvp_primal"], out["jvp"] = jax.jvp(H, (x,), (ct,))
        out["vjp"] = jax.vjp(H, x)[1](ct)[0]
        out["linearize"] = jax.linearize(H, x)[1](ct)
        out["jacfwd"] = jax.jacfwd(H)(x)
        out["jacrev"] = jax.jacrev(H)(x)
        out["hessian"] = jax.hessian(lambda x: H(x).sum())(x)
        out["vmap_x"] = jax.vmap(jax.grad(H))(x)
        # vmap over axis 1 of a 2-d input, output on axis 1
        out["vmap_axis1"] = jax.vmap(jax.grad(lambda c: H(c).sum()), in_axes=1, out_axes=1)(x2d)
        out["checkpoint"] = jax.grad(lambda x: jax.checkpoint(H)(x).sum())(x)
        out["checkpoint_hessian"] = jax.vmap(jax.grad(jax.grad(jax.checkpoint(H))))(x)

        # lax.scan: a leaky accumulator v_t = 0.5 v_{t-1} + x_t spiking at every step
        def step(v, xt):
            v = 0.5 * v + xt
            return v, H(v)

        def scan_loss(xs):
            return jax.lax.scan(step, jnp.zeros(xs.shape[1:], xs.dtype), xs)[1].sum()

        out["scan"] = jax.grad(scan_loss)(xs_time)
        out["scan_jvp"] = jax.jvp(scan_loss, (xs_time,), (jnp.ones_like(xs_time),))[1]
        # parameters: dH/dθ = 0 exactly, forward and reverse
        out["dparams"] = jax.grad(lambda o: o(x).sum())(s)
        out["dparams_fwd"] = jax.jacfwd(lambda o: o(x))(s)
        # vmap over parameters: the whole pytree, a pytree in_axes prefix, a functional
        out["vmap_params"] = jax.vmap(lambda o: jax.vmap(jax.grad(o))(x))(batched)
        # in_axes as a surrogate-shaped prefix: batch the first parameter only
        leaves, treedef = jax.tree_util.tree_flatten(s)
        only_first = jax.tree_util.tree_unflatten(treedef, [first_values] + leaves[1:])
        in_axes_tree = jax.tree_util.tree_unflatten(treedef, [0] + [None] * (len(leaves) - 1))
        out["vmap_params_prefix"] = jax.vmap(
            lambda o: jax.grad(lambda z: o(z).sum())(x), in_axes=(in_axes_tree,)
        )(only_first)
        out["vmap_params_and_x"] = jax.vmap(lambda o, xr: jax.grad(lambda z: o(z).sum())(xr))(
            batched, x2d.T[:BATCH]
        )
        out["vmap_functional"] = jax.vmap(
            lambda a: jax.grad(lambda z: functional(z, **static, **{first: a}).sum())(x)
        )(first_values)
        out["vmap_functional_in_axes"] = jax.vmap(
            lambda z, a: jax.grad(lambda u: functional(u, **static, **{first: a}))(z), in_axes=(0, None)
        )(x, first_values[0])
        return out

    return run


_SUITES = {}


def suite(name):
    if name not in _SUITES:
        _SUITES[name] = jax.jit(_suite(name))
    return _SUITES[name]


def _assert_ct_scaled(got, ct, name, x, params, what):
    # got = ct · g′(x); ct ∈ [0.5, 1.5], so dividing adds at most an ulp
    assert_matches_oracle(np.asarray(got, np.float64) / np.asarray(ct, np.float64), name, x, params, "float32", what)


@pytest.mark.parametrize("name", NAMES)
def test_transform_matrix(name):
    rng = np.random.default_rng(seed_of(name))
    leaves = numeric_params(name)
    for params in (dict(SPEC[name][1]), sample_params(name, rng)):
        s = cls_of(name)(**params)
        x = x_points(name, params, n=8, seed=seed_of(name, 1)).astype(np.float32)
        n = x.size
        ct = rng.uniform(0.5, 1.5, n).astype(np.float32)
        x2d = np.stack([x, x[::-1], np.roll(x, 3)], axis=1)  # [n, 3]
        xs_time = rng.normal(0, 1.5, (T_STEPS, n)).astype(np.float32)
        batch_params = [sample_params(name, rng) for _ in range(BATCH)]
        batched = cls_of(name)(
            **dict(params, **{k: np.asarray([b[k] for b in batch_params], np.float32) for k in leaves})
        )
        first = leaves[0]
        first_values = jnp.asarray([b[first] for b in batch_params], jnp.float32)
        out = suite(name)(s, batched, first_values, x, ct, x2d, xs_time)
        out = jax.tree_util.tree_map(np.asarray, out)

        spikes = (x >= 0).astype(np.float32)
        for what in ("forward", "jit", "jvp_primal"):
            assert out[what].dtype == np.float32, what
            np.testing.assert_array_equal(out[what], spikes, err_msg=what)
        for what in ("grad", "jvp", "vjp", "linearize"):
            _assert_ct_scaled(out[what], ct, name, x, params, what)
        for what in ("jacfwd", "jacrev"):
            jac = out[what]
            assert jac.shape == (n, n)
            np.testing.assert_array_equal(jac - np.diag(np.diag(jac)), 0, err_msg=what)
            assert_matches_oracle(np.diag(jac), name, x, params, "float32", what)
        for what in ("vmap_x", "checkpoint"):
            assert_matches_oracle(out[what], name, x, params, "float32", what)
        for j in range(x2d.shape[1]):
            assert_matches_oracle(out["vmap_axis1"][:, j], name, x2d[:, j], params, "float32", "vmap_axis1")

        # second order: d²H/dx² = dg′/dx (hessian is diagonal)
        hess = out["hessian"]
        np.testing.assert_array_equal(hess - np.diag(np.diag(hess)), 0, err_msg="hessian off-diagonal")
        want2 = d2x64(name, x, params)
        # (finite-difference noise scales with g′, so the floor does too)
        scale2 = max(np.max(np.abs(d2x64(name, np.linspace(-4, 4, 801) + 1e-3, params))), peak(name, params))
        for what, got2 in (("hessian", np.diag(hess)), ("checkpoint_hessian", out["checkpoint_hessian"])):
            np.testing.assert_allclose(got2, want2, rtol=2e-3, atol=1e-4 * scale2, err_msg=what)

        # scan: dL/dx_t = Σ_{k≥t} 0.5^(k−t) g′(v_k), with v from the same recurrence in f64
        v = np.zeros(n)
        vs = []
        for t in range(T_STEPS):
            v = 0.5 * v + xs_time[t].astype(np.float64)
            vs.append(v)
        gv = np.stack([grad64(name, vk, params) for vk in vs])
        want_scan = np.zeros_like(gv)
        acc = np.zeros(n)
        for t in reversed(range(T_STEPS)):
            acc = gv[t] + 0.5 * acc
            want_scan[t] = acc
        np.testing.assert_allclose(out["scan"], want_scan, rtol=1e-4, atol=1e-5 * peak(name, params), err_msg="scan")
        np.testing.assert_allclose(out["scan_jvp"], want_scan.sum(), rtol=1e-4, atol=1e-4 * peak(name, params) * n, err_msg="scan_jvp")

        # dH/dθ = 0 exactly
        for what in ("dparams", "dparams_fwd"):
            got = out[what]
            assert type(got) is type(s), what
            for leaf in jax.tree_util.tree_leaves(got):
                np.testing.assert_array_equal(leaf, 0, err_msg=what)

        # vmap over parameters
        for b, bp in enumerate(batch_params):
            full = dict(params, **{k: bp[k] for k in leaves})
            assert_matches_oracle(out["vmap_params"][b], name, x, full, "float32", "vmap_params")
            assert_matches_oracle(
                out["vmap_params_prefix"][b], name, x, dict(params, **{first: bp[first]}), "float32", "prefix"
            )
            assert_matches_oracle(
                out["vmap_params_and_x"][b], name, x2d.T[b], full, "float32", "vmap_params_and_x"
            )
            only_first = dict(SPEC[name][1], **{first: bp[first]})
            assert_matches_oracle(out["vmap_functional"][b], name, x, only_first, "float32", "vmap_functional")
        only_first = dict(SPEC[name][1], **{first: batch_params[0][first]})
        assert_matches_oracle(out["vmap_functional_in_axes"], name, x, only_first, "float32", "in_axes")


@pytest.mark.parametrize("name", ["Sigmoid", "S2NN", "SquarewaveFourierSeries"])
def test_transform_matrix_eager(name):
    """The same transformations without an outer jit (op-by-op dispatch)."""
    params = sample_params(name, np.random.default_rng(seed_of(name, 2)))
    s = cls_of(name)(**params)
    x = jnp.asarray(x_points(name, params, n=6, seed=3), jnp.float32)
    want = grad64(name, np.asarray(x), params)
    ct = jnp.ones_like(x)
    tol = dict(rtol=2e-5, atol=1e-6 * peak(name, params))
    results = {
        "grad": jax.grad(lambda x: s(x).sum())(x),
        "jvp": jax.jvp(s, (x,), (ct,))[1],
        "vjp": jax.vjp(s, x)[1](ct)[0],
        "linearize": jax.linearize(s, x)[1](ct),
        "jacfwd": jnp.diag(jax.jacfwd(s)(x)),
        "jacrev": jnp.diag(jax.jacrev(s)(x)),
        "vmap": jax.vmap(jax.grad(s))(x),
        "checkpoint": jax.grad(lambda x: jax.checkpoint(s)(x).sum())(x),
    }
    for what, got in results.items():
        np.testing.assert_allclose(got, want, err_msg=what, **tol)
    np.testing.assert_allclose(
        jnp.diag(jax.hessian(lambda x: s(x).sum())(x)), d2x64(name, np.asarray(x), params), rtol=2e-3, atol=1e-5
    )


# -- dtype matrix and finite gradients ----------------------------------------------------------
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _per_point(s, x):
    """H, dH/dx, jvp, vjp, d²H/dx², ∂(dH/dx)/∂θ at every point of x, and dH/dθ (one compile)."""
    ones = jnp.ones_like(x)
    return {
        "H": s(x),
        "g1": jax.vmap(jax.grad(s))(x),
        "jvp": jax.jvp(s, (x,), (ones,))[1],
        "vjp": jax.vjp(s, x)[1](ones)[0],
        "d2x": jax.vmap(jax.grad(jax.grad(s)))(x),
        "d2x_fwd": jax.vmap(jax.jacfwd(jax.grad(s)))(x),
        "d2param": jax.vmap(lambda z: jax.grad(lambda o: jax.grad(o)(z))(s))(x),
        "d2param_fwd": jax.vmap(lambda z: jax.jacfwd(lambda o: jax.grad(o)(z))(s))(x),
        "dparam": jax.grad(lambda o: o(x).sum())(s),
    }


_PER_POINT = jax.jit(_per_point)


def extreme_inputs(name, params, dtype):
    """Finite inputs that stress a formula: huge, tiny, zero, the kinks and their neighbours
    (host numpy, in ``dtype``)."""
    dtype = np.dtype(dtype)
    fi = jnp.finfo(dtype)
    vals = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 3.0, -3.0, 1e4, -1e4, 1e3, -1e3]
    vals += [float(fi.tiny), -float(fi.tiny), float(fi.max), -float(fi.max), float(fi.max) / 2, -float(fi.max) / 2]
    vals += [float(fi.eps), -float(fi.eps)]
    special = kinks(name, params) + {"S2NN": [-1.0], "LogTailedRelu": [1.0]}.get(name, [])
    vals += special
    base = np.asarray(vals, np.float64).astype(dtype)
    # neighbours of the nonzero kinks (0's neighbours are subnormal; ±tiny stands in for them,
    # as XLA on CPU treats subnormals as zero)
    ks = np.asarray([k for k in special if k != 0] or [1.0], np.float64).astype(dtype)
    up = np.nextafter(ks, np.asarray(np.inf, dtype))
    down = np.nextafter(ks, np.asarray(-np.inf, dtype))
    out = np.concatenate([base, up, down])
    assert np.all(np.isfinite(out.astype(np.float64)))
    return out


def _param_sets_for_dtype(name, rng):
    sets = [dict(SPEC[name][1]), sample_params(name, rng)]
    sample = registry.spec(name).sample
    sets.append(dict(SPEC[name][1], **{k: float(np.float32(lo)) for k, (lo, hi) in sample.items()}))
    sets.append(dict(SPEC[name][1], **{k: float(np.float32(hi)) for k, (lo, hi) in sample.items()}))
    return sets


def _fourier_dT_may_overflow(x, params, dtype):
    """∂g′/∂T = -(4/T²)Σcos(cωx) + (8π x/T³)Σ c·sin(cωx), c = 2i-1, grows like x: where
    its bound passes the dtype's range (forward mode returns it in x's dtype), or where x is
    beyond 2**100 (reduced modulo T, so the T-derivative carries a trunc(x/T) factor),
    an infinite value is honest, not a bug."""
    T, m = params["t_period"], max(int(params["n"]), 1)
    bound = 4 / T**2 * m + 8 * np.pi * np.abs(x) / T**3 * m**2
    return (bound >= float(jnp.finfo(dtype).max) / 2) | (np.abs(x) >= 1e30)


def _named_leaves(tree):
    """(parameter name, value) of a surrogate-shaped result, or ("", array)."""
    if isinstance(tree, sf.Surrogate):
        return [(p[-1].name, leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return [("", tree)]


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("name", NAMES)
def test_dtype_matrix_and_finite_gradients(name, dt):
    dtype = DTYPES[dt]
    rng = np.random.default_rng(seed_of(name, 6))
    for params in _param_sets_for_dtype(name, rng):
        s = cls_of(name)(**params)
        grid = np.linspace(-6, 6, 97).astype(dtype)
        x = np.concatenate([grid, extreme_inputs(name, params, dtype)])
        out = jax.tree_util.tree_map(np.asarray, _PER_POINT(s, jnp.asarray(x)))
        xf = np.asarray(x, np.float64)
        for what in ("H", "g1", "jvp", "vjp", "d2x", "d2x_fwd"):
            assert out[what].dtype == dtype, (what, out[what].dtype)
        np.testing.assert_array_equal(out["H"].astype(np.float32), (xf >= 0).astype(np.float32))
        # finite: first and second order, in x and in the parameters
        for what, val in out.items():
            for key, leaf in _named_leaves(val):
                bad = ~np.isfinite(np.asarray(leaf, np.float64))
                if (name, key) == ("SquarewaveFourierSeries", "t_period"):
                    bad &= ~_fourier_dT_may_overflow(xf, params, dtype)
                assert not bad.any(), f"{what}{key} not finite at x={xf[bad]} for {name} {params} {dt}"
        # values: close to the f64 closed form (moderate |x|; beyond, only finiteness)
        mask = np.abs(xf) <= 1e4
        for what in ("g1", "jvp", "vjp"):
            assert_matches_oracle(out[what][mask], name, xf[mask], params, dt, what)
        for _, leaf in _named_leaves(out["dparam"]):
            np.testing.assert_array_equal(leaf, 0, err_msg="dH/dθ")


# -- float64: values, second order against finite differences, finiteness -------------------
@pytest.mark.parametrize("name", NAMES)
def test_float64_values_and_second_order(name):
    """Under x64: H and every derivative in f64; d²H/dx² and ∂(dH/dx)/∂θ (reverse and forward
    over reverse) equal 5-point finite differences of the closed-form g′; dH/dθ = 0."""
    rng = np.random.default_rng(seed_of(name, 4))
    with jax.enable_x64(True):
        for params in (dict(SPEC[name][1]), sample_params(name, rng), sample_params(name, rng)):
            pts = x_points(name, params, n=24, seed=seed_of(name, 5))
            x = np.concatenate([pts, np.linspace(-6, 6, 49), extreme_inputs(name, params, np.float64)])
            s = cls_of(name)(**params)
            out = jax.tree_util.tree_map(np.asarray, _PER_POINT(s, jnp.asarray(x, jnp.float64)))
            for what in ("H", "g1", "jvp", "vjp", "d2x", "d2x_fwd"):
                assert out[what].dtype == np.float64, what
            np.testing.assert_array_equal(out["H"], (x >= 0).astype(np.float64))
            mask = np.abs(x) <= 1e4
            for what in ("g1", "jvp", "vjp"):
                assert_matches_oracle(out[what][mask], name, x[mask], params, "float64", what)
            # (f64 is not in §7.5's finite-gradient promise; require it up to |x| = 1e30)
            sane = np.abs(x) <= 1e30
            for what, val in out.items():
                for key, leaf in _named_leaves(val):
                    if np.ndim(leaf):
                        assert np.all(np.isfinite(leaf[sane])), (what, key)
            for _, leaf in _named_leaves(out["dparam"]):
                np.testing.assert_array_equal(leaf, 0, err_msg="dH/dθ")
            k = pts.size  # second order at the random points, away from kinks
            # finite-difference noise is ~1e-12 of g′, so the absolute floor scales with both
            want = d2x64(name, pts, params)
            scale = max(np.max(np.abs(d2x64(name, np.linspace(-4, 4, 801) + 1e-3, params))), peak(name, params))
            for what in ("d2x", "d2x_fwd"):
                np.testing.assert_allclose(out[what][:k], want, rtol=1e-6, atol=1e-9 * scale, err_msg=f"{what} {params}")
            for what in ("d2param", "d2param_fwd"):
                got = out[what]
                assert type(got) is cls_of(name)
                for key in numeric_params(name):
                    want_p = dparam64(name, pts, params, key)
                    scale_p = max(np.max(np.abs(want_p)), peak(name, params))
                    np.testing.assert_allclose(
                        getattr(got, key)[:k], want_p, rtol=1e-6, atol=1e-9 * scale_p,
                        err_msg=f"{what} ∂/∂{key} {params}",
                    )
