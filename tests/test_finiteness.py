"""The finiteness matrix: every shape x f32/bf16/f16 x CPU backend (reference, interpret).

One jitted call per (shape, backend), covering the three dtypes, evaluates, at every point of a batch of inputs,
H, dH/dx (vjp, the kernel on "interpret"), d²H/dx² and ∂(dH/dx)/∂θ for each parameter θ
(second order differentiates the reference formula on every backend, see _spike.py), for
three parameter sets (defaults and both ends of the registry's sample ranges).

Finite inputs: ``test_surrogate_transforms.extreme_inputs`` (0, ±0.5, ±1, ±3, ±1e3, ±1e4,
±tiny, ±eps, ±max/2, ±max of the dtype, the kinks ±1/alpha, ±w, ±width, 0, -1 for S2NN,
1 for LogTailedRelu, and one ulp either side of each nonzero kink) plus ±1e-3.
Every value must be finite, with one exemption: ∂(dH/dx)/∂t_period of
SquarewaveFourierSeries grows like |x|/T³ and overflows honestly (``_fourier_dT_may_overflow``).

Non-finite inputs (+inf, -inf, NaN): H = 1, 0, 0 on every backend, and dH/dx equals the pinned
``NONFINITE_GRAD`` row of the shape. ``test_docs_matrix_is_current`` regenerates the table of
docs/finiteness.md from these results (``python tests/test_finiteness.py`` prints it, ``--write``
puts it there).
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spikefuse
from spikefuse.surrogate.registry import SHAPES

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_surrogate_formulas import SPEC  # noqa: E402
from test_surrogate_transforms import _fourier_dT_may_overflow, extreme_inputs  # noqa: E402

BACKENDS = ("reference", "interpret")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
SHORT = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
NAMES = [s.name for s in SHAPES]
NONFINITE = np.asarray([np.inf, -np.inf, np.nan])
NAN = float("nan")

# dH/dx at (+inf, -inf, NaN): (text for the docs, values from the parameters). Why:
# * most shapes decay to 0 at ±inf; NaN propagates through their arithmetic;
# * `where`-selected constants pick a branch for NaN too, because NaN compares false:
#   PiecewiseLeakyRelu where(|x| > w, c, 1/(2w)) -> 1/(2w); LeakyRelu where(x < 0, α, β) -> β;
#   LogTailedRelu where(x > 1, 1/x, where(x > 0, 1, α)) -> α (and 1/inf = 0 at +inf);
# * ReluGrad α·max(width - |x|, 0): max propagates NaN;
# * SquarewaveFourierSeries: cos(±inf) is NaN (a periodic function has no limit).
_ZZN = ("0, 0, NaN", lambda p: (0.0, 0.0, NAN))
NONFINITE_GRAD = {name: _ZZN for name in NAMES}
NONFINITE_GRAD.update({
    "PiecewiseLeakyRelu": ("c, c, 1/(2w)", lambda p: (p["c"], p["c"], 1 / (2 * p["w"]))),
    "SquarewaveFourierSeries": ("NaN, NaN, NaN", lambda p: (NAN, NAN, NAN)),
    "LeakyRelu": ("β, α, β", lambda p: (p["beta"], p["alpha"], p["beta"])),
    "LogTailedRelu": ("0, α, α", lambda p: (0.0, p["alpha"], p["alpha"])),
})


def param_sets(name):
    spec = next(s for s in SHAPES if s.name == name)
    defaults = dict(SPEC[name][1])
    lo = dict(defaults, **{k: float(np.float32(a)) for k, (a, b) in spec.sample.items()})
    hi = dict(defaults, **{k: float(np.float32(b)) for k, (a, b) in spec.sample.items()})
    return [defaults, lo, hi]


def finite_inputs(name, params, dtype):
    extra = np.asarray([1e-3, -1e-3], np.float64).astype(np.dtype(dtype))
    return np.concatenate([extreme_inputs(name, params, dtype), extra])


def _evaluate_one(backend, s, x):
    def g1(o, v):  # dH/dx by reverse mode: the grad_mul kernel on "interpret"
        return jax.vjp(lambda u: spikefuse.fire(u, 0.0, o, backend=backend), v)[1](jnp.ones_like(v))[0]

    # second order by forward mode over g1 (g1 is elementwise, so one jvp per direction
    # gives d²H/dx² and ∂(dH/dx)/∂θ at every point)
    leaves, treedef = jax.tree_util.tree_flatten(s)
    d2p = []
    for i in range(len(leaves)):
        tangent = [jnp.zeros_like(jnp.asarray(v)) for v in leaves]
        tangent[i] = jnp.ones_like(jnp.asarray(leaves[i]))
        d2p.append(jax.jvp(lambda o: g1(o, x), (s,), (jax.tree_util.tree_unflatten(treedef, tangent),))[1])
    return {
        "H": spikefuse.fire(x, 0.0, s, backend=backend),
        "d1": g1(s, x),
        "d2x": jax.jvp(lambda v: g1(s, v), (x,), (jnp.ones_like(x),))[1],
        "d2p": jax.tree_util.tree_unflatten(treedef, d2p),
    }


# One compilation per (shape, backend) covers the three dtypes (XLA's per-module compile
# overhead dominates here); the parameter sets are pytree leaves, so they reuse it.
_evaluate = jax.jit(
    lambda backend, s, xs: {dt: _evaluate_one(backend, s, x) for dt, x in xs.items()},
    static_argnums=0)


@functools.lru_cache(maxsize=None)
def _evaluate_all(name, backend):
    spec = next(s for s in SHAPES if s.name == name)
    out = {dt: [] for dt in DTYPES}
    for params in param_sets(name):
        xs = {dt: np.concatenate([finite_inputs(name, params, dtype),
                                  NONFINITE.astype(np.dtype(dtype))])
              for dt, dtype in DTYPES.items()}
        r = _evaluate(backend, spec.cls(**params), {dt: jnp.asarray(x) for dt, x in xs.items()})
        for dt in DTYPES:
            leaves = jax.tree_util.tree_flatten_with_path(r[dt]["d2p"])[0]
            res = {k: np.asarray(r[dt][k]) for k in ("H", "d1", "d2x")}
            res["d2p"] = {p[-1].name: np.asarray(v) for p, v in leaves}
            out[dt].append((params, xs[dt], res))
    return out


def evaluate(name, dt, backend):
    """Results for the three parameter sets: a list of (params, x, {quantity: ndarray}),
    ``d2p`` a dict parameter -> per-point values."""
    return _evaluate_all(name, backend)[dt]


def check(name, dt, backend):
    """Asserts the row's promises; returns {"first": ok, "second": ok, "exempt": n} for the docs."""
    dtype = DTYPES[dt]
    exempt = 0
    for params, x, res in evaluate(name, dt, backend):
        xf = np.asarray(x, np.float64)
        fin = np.isfinite(xf)
        where = f"{name} {params} {dt} {backend}"
        # forward, finite and non-finite: H = [x >= 0], so +inf -> 1, -inf -> 0, NaN -> 0
        assert res["H"].dtype == dtype and res["d1"].dtype == dtype and res["d2x"].dtype == dtype
        np.testing.assert_array_equal(res["H"].astype(np.float64), (xf >= 0).astype(np.float64), err_msg=where)
        np.testing.assert_array_equal(res["H"][~fin].astype(np.float64), [1.0, 0.0, 0.0])
        # first and second order finite at every finite input
        for what in ("d1", "d2x"):
            bad = ~np.isfinite(res[what][fin].astype(np.float64))
            assert not bad.any(), f"{what} not finite at x={xf[fin][bad]} for {where}"
        for key, val in res["d2p"].items():
            bad = ~np.isfinite(val[fin].astype(np.float64))
            if (name, key) == ("SquarewaveFourierSeries", "t_period"):
                allowed = _fourier_dT_may_overflow(xf[fin], params, dtype)
                exempt += int((bad & allowed).sum())
                bad &= ~allowed
            assert not bad.any(), f"∂(dH/dx)/∂{key} not finite at x={xf[fin][bad]} for {where}"
        # dH/dx at +inf, -inf, NaN: the pinned values, in the dtype
        want = np.asarray(NONFINITE_GRAD[name][1](params), np.float64).astype(np.dtype(dtype))
        np.testing.assert_allclose(res["d1"][~fin].astype(np.float64), want.astype(np.float64),
                                   rtol=1e-6, atol=0, equal_nan=True, err_msg=where)
    return {"exempt": exempt}


CASES = [(n, d, b) for n in NAMES for d in DTYPES for b in BACKENDS]


@pytest.mark.parametrize("name, dt, backend", CASES, ids=[f"{n}-{SHORT[d]}-{b}" for n, d, b in CASES])
def test_finiteness(name, dt, backend):
    check(name, dt, backend)


def test_interpret_first_order_equals_reference_at_the_extremes():
    """The kernel's dH/dx at the extreme inputs is the reference's, bit for bit in the dtype
    (both compute bf16/f16 in f32 and round once), including the pinned NaN positions."""
    for name in NAMES:
        for dt in DTYPES:
            for (_, _, ref), (_, _, ker) in zip(evaluate(name, dt, "reference"), evaluate(name, dt, "interpret")):
                np.testing.assert_array_equal(ker["d1"].astype(np.float64), ref["d1"].astype(np.float64),
                                              err_msg=f"{name} {dt}")


# -- the docs matrix (docs/finiteness.md) -------------------------------------------------
BEGIN = "<!-- finiteness-matrix:begin (generated by tests/test_finiteness.py; do not edit) -->"
END = "<!-- finiteness-matrix:end -->"


def matrix_markdown() -> str:
    cols = [(d, b) for d in DTYPES for b in BACKENDS]
    head = "| shape | " + " | ".join(f"{SHORT[d]} {b}" for d, b in cols) + " | dH/dx at +inf, −inf, NaN |"
    rows = [head, "|" + "---|" * (len(cols) + 2)]
    for name in NAMES:
        cells = []
        for d, b in cols:
            info = check(name, d, b)  # raises if any promise fails: no row without its test
            cells.append("✓ ✓†" if info["exempt"] else "✓ ✓")
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {NONFINITE_GRAD[name][0]} |")
    return "\n".join([BEGIN, *rows, END])


DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "finiteness.md")


def test_docs_matrix_is_current():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    assert BEGIN in text and END in text, "docs/finiteness.md lacks the finiteness matrix markers"
    current = text[text.index(BEGIN): text.index(END) + len(END)]
    assert current == matrix_markdown(), ("docs/finiteness.md's matrix is stale: run "
                                          "python tests/test_finiteness.py --write")


def write_docs_matrix() -> None:
    """Replaces the table between the markers of docs/finiteness.md with a fresh one."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(text[:start] + matrix_markdown() + text[end:])


if __name__ == "__main__":  # python tests/test_finiteness.py [--write]
    if sys.argv[1:] == ["--write"]:
        write_docs_matrix()
    else:
        print(matrix_markdown())
