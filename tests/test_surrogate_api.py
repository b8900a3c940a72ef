"""The public surface of spikefuse.surrogate: names, lookup, signatures, object protocol,
every §7 fix of the spec, the forward, the backend switch and ``spikefuse.fire``.

Expected values come from the spec (written out in ``test_surrogate_formulas.SPEC``) and
from closed forms, never from the code under test.
"""

from __future__ import annotations

import copy
import functools
import inspect
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spikefuse
import spikefuse.surrogate as sf
from spikefuse.kernels import dispatch
from spikefuse.surrogate import registry

# the oracle lives in test_surrogate_formulas (tests/ is on sys.path, as for lowering.py)
from test_surrogate_formulas import NAMES, SPEC, WITH_G, grad64, numeric_params, sample_params

ALL_37 = ["Surrogate"] + [n for name in NAMES for n in (name, SPEC[name][0])]
NO_G = [n for n in NAMES if n not in WITH_G]
LOW = [jnp.bfloat16, jnp.float16]


def cls_of(name):
    return getattr(sf, name)


def fn_of(name):
    return getattr(sf, SPEC[name][0])


def defaults(name):
    return dict(SPEC[name][1])


def vgrad(f, x):
    return jax.vmap(jax.grad(f))(x)


X7 = jnp.asarray([-2.5, -1.2, -0.3, 0.0, 0.4, 1.1, 3.0], jnp.float32)


@pytest.fixture(autouse=True)
def _x64_does_not_leak():
    before = bool(jax.config.jax_enable_x64)
    yield
    assert bool(jax.config.jax_enable_x64) == before


# -- names -----------------------------------------------------------------------------------
def test_37_names_exported():
    assert len(ALL_37) == 37
    for n in ALL_37:
        assert hasattr(sf, n), n
    assert set(ALL_37) <= set(sf.__all__)
    assert isinstance(sf.Surrogate, type)
    for name in NAMES:
        assert isinstance(cls_of(name), type) and issubclass(cls_of(name), sf.Surrogate)
        assert callable(fn_of(name)) and not isinstance(fn_of(name), type)
        assert cls_of(name).__name__ == name and fn_of(name).__name__ == SPEC[name][0]


def test_names():
    got = sf.names()
    assert isinstance(got, list) and len(got) == 18
    assert sorted(got) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_get_by_class_or_functional_name_case_insensitive(name):
    functional = SPEC[name][0]
    for key in (name, name.lower(), name.upper(), functional, functional.upper(), functional.title()):
        obj = sf.get(key)
        assert type(obj) is cls_of(name), key
        assert obj == cls_of(name)()
    p = sample_params(name, np.random.default_rng(0))
    obj = sf.get(functional, **p)
    assert obj == cls_of(name)(**p)
    for k, v in p.items():
        assert getattr(obj, k) == v


def test_get_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        sf.get("not_a_shape")
    msg = str(err.value)
    assert "not_a_shape" in msg
    for name in NAMES:
        assert name in msg or SPEC[name][0] in msg, name


def test_get_rejects_unknown_parameter():
    with pytest.raises((TypeError, ValueError), match="gamma"):
        sf.get("sigmoid", gamma=1.0)


# -- signatures, defaults, order -------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_signatures(name):
    want = list(SPEC[name][1].items())
    cls_params = list(inspect.signature(cls_of(name)).parameters.values())
    assert [(p.name, p.default) for p in cls_params] == want
    for p, (_, d) in zip(cls_params, want):
        assert type(p.default) is type(d), (p.name, p.default)
    fn_params = list(inspect.signature(fn_of(name)).parameters.values())
    assert fn_params[0].name == "x" and fn_params[0].default is inspect.Parameter.empty
    assert [(p.name, p.default) for p in fn_params[1:]] == want
    # parameters are stored as attributes of the same names
    obj = cls_of(name)()
    for k, d in want:
        assert getattr(obj, k) == d
    # positional order is the documented order
    values = list(sample_params(name, np.random.default_rng(1)).values())
    pos = cls_of(name)(*values)
    for (k, _), v in zip(want, values):
        assert getattr(pos, k) == v


@pytest.mark.parametrize("name", NAMES)
def test_functional_equals_class_call(name):
    p = sample_params(name, np.random.default_rng(2))
    obj, fn = cls_of(name)(**p), fn_of(name)
    np.testing.assert_array_equal(fn(X7, **p), obj(X7))
    np.testing.assert_array_equal(fn(X7, *p.values()), obj(X7))
    np.testing.assert_array_equal(vgrad(lambda x: fn(x, **p), X7), vgrad(obj, X7))
    # and both are the spec's g′
    np.testing.assert_allclose(vgrad(obj, X7), grad64(name, np.asarray(X7), p), rtol=2e-5, atol=1e-6)


# -- repr ------------------------------------------------------------------------------------
REPRS = {
    "Sigmoid": "Sigmoid(alpha=4.0)",
    "PiecewiseQuadratic": "PiecewiseQuadratic(alpha=1.0)",
    "PiecewiseExp": "PiecewiseExp(alpha=1.0)",
    "SoftSign": "SoftSign(alpha=1.0)",
    "Arctan": "Arctan(alpha=1.0)",
    "NonzeroSignLog": "NonzeroSignLog(alpha=1.0)",
    "ERF": "ERF(alpha=1.0)",
    "PiecewiseLeakyRelu": "PiecewiseLeakyRelu(c=0.01, w=1.0)",
    "SquarewaveFourierSeries": "SquarewaveFourierSeries(n=2, t_period=8.0)",
    "S2NN": "S2NN(alpha=4.0, beta=1.0, epsilon=1e-08)",
    "QPseudoSpike": "QPseudoSpike(alpha=2.0)",
    "LeakyRelu": "LeakyRelu(alpha=0.1, beta=1.0)",
    "LogTailedRelu": "LogTailedRelu(alpha=0.0)",
    "ReluGrad": "ReluGrad(alpha=0.3, width=1.0)",
    "GaussianGrad": "GaussianGrad(alpha=0.5, sigma=0.5)",
    "InvSquareGrad": "InvSquareGrad(alpha=100.0)",
    "MultiGaussianGrad": "MultiGaussianGrad(h=0.15, s=6.0, sigma=0.5, scale=0.5)",
    "SlayerGrad": "SlayerGrad(alpha=1.0)",
}


@pytest.mark.parametrize("name", NAMES)
def test_repr(name):
    assert repr(cls_of(name)()) == REPRS[name]


def test_repr_non_default():
    assert repr(sf.Sigmoid(alpha=2.5)) == "Sigmoid(alpha=2.5)"
    assert repr(sf.GaussianGrad(0.25, 2.0)) == "GaussianGrad(alpha=2.0, sigma=0.25)"
    assert repr(sf.SquarewaveFourierSeries(5, 2.0)) == "SquarewaveFourierSeries(n=5, t_period=2.0)"
    assert repr(sf.S2NN(1.5, 2.0, 1e-6)) == "S2NN(alpha=1.5, beta=2.0, epsilon=1e-06)"


# -- equality and hash -----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_equality_by_value(name):
    rng = np.random.default_rng(3)
    p, q = sample_params(name, rng), sample_params(name, rng)
    assert cls_of(name)(**p) == cls_of(name)(**dict(p))
    assert hash(cls_of(name)(**p)) == hash(cls_of(name)(**dict(p)))
    assert cls_of(name)(**p) != cls_of(name)(**q)
    assert cls_of(name)() != "not a surrogate"
    other = NAMES[(NAMES.index(name) + 1) % len(NAMES)]
    assert cls_of(name)() != cls_of(other)()


def test_equality_across_classes_with_same_params():
    assert sf.Sigmoid(1.0) != sf.Arctan(1.0)
    assert sf.ERF(1.0) != sf.SlayerGrad(1.0)


_array_makers = [
    lambda v: jnp.asarray(v, jnp.float32),
    lambda v: np.asarray(v, np.float32),
    lambda v: np.asarray(v, np.float64),
]


@pytest.mark.parametrize("make_a", _array_makers)
@pytest.mark.parametrize("make_b", _array_makers)
def test_array_params_compare_by_value_and_hash(make_a, make_b):
    a = sf.Sigmoid(make_a([1.0, 2.0, 4.0]))
    b = sf.Sigmoid(make_b([1.0, 2.0, 4.0]))
    c = sf.Sigmoid(make_b([1.0, 2.0, 5.0]))
    d = sf.Sigmoid(make_b([1.0, 2.0]))
    assert a == b and hash(a) == hash(b)
    assert a != c and a != d
    hash(c), hash(d)  # never raises
    assert {a: 1}[b] == 1


def test_hash_never_raises_with_traced_params():
    def f(s, x):
        assert isinstance(hash(s), int)
        return s(x)

    np.testing.assert_array_equal(jax.jit(f)(sf.MultiGaussianGrad(), X7), (np.asarray(X7) >= 0))
    jax.vmap(f, in_axes=(0, None))(sf.Sigmoid(jnp.ones(3)), X7)


@pytest.mark.parametrize(
    "value",
    [4.0, 4, np.float32(4.0), np.float64(4.0), jnp.float32(4.0), jnp.asarray(4.0), np.asarray(4.0)],
    ids=["float", "int", "np32", "np64", "jnp32", "jnp_weak", "np0d"],
)
def test_scalar_param_representations_equal_and_hash_equal(value):
    a, b = sf.Sigmoid(4.0), sf.Sigmoid(value)
    assert a == b and b == a
    assert hash(a) == hash(b)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    v=st.floats(0.1, 10, allow_nan=False),
    shape=st.sampled_from([(), (1,), (3,), (2, 3)]),
    kind=st.sampled_from(["jnp", "np", "py"]),
)
def test_hash_never_raises_and_agrees_with_eq(v, shape, kind):
    arr = np.full(shape, v, np.float32)
    val = {"jnp": jnp.asarray(arr), "np": arr, "py": float(arr.reshape(-1)[0]) if arr.size else 0.0}[kind]
    for name in ("Sigmoid", "GaussianGrad", "MultiGaussianGrad", "S2NN"):
        first = numeric_params(name)[0]
        a = cls_of(name)(**{first: val})
        b = cls_of(name)(**{first: copy.deepcopy(val)})
        assert isinstance(hash(a), int)
        assert a == b and hash(a) == hash(b)


# -- pytree ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_pytree_leaves_are_the_numeric_params(name):
    p = sample_params(name, np.random.default_rng(4))
    obj = cls_of(name)(**p)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(obj)
    got = {path[-1].name: leaf for path, leaf in with_path}
    assert got == {k: p[k] for k in numeric_params(name)}
    back = jax.tree_util.tree_unflatten(treedef, [leaf for _, leaf in with_path])
    assert type(back) is type(obj) and back == obj and repr(back) == repr(obj)
    doubled = jax.tree_util.tree_map(lambda v: 2 * v, obj)
    assert type(doubled) is type(obj)
    for k in SPEC[name][1]:
        want = 2 * p[k] if k in numeric_params(name) else p[k]
        assert getattr(doubled, k) == want


def test_fourier_n_is_static_aux_data():
    a, b = sf.SquarewaveFourierSeries(2, 8.0), sf.SquarewaveFourierSeries(3, 8.0)
    assert jax.tree_util.tree_leaves(a) == [8.0]
    assert jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(
        sf.SquarewaveFourierSeries(2, 3.0)
    )
    doubled = jax.tree_util.tree_map(lambda v: v * 2, a)
    assert doubled.n == 2 and isinstance(doubled.n, int) and doubled.t_period == 16.0


@pytest.mark.parametrize("name", NAMES)
def test_jit_argument_does_not_recompile_when_params_change(name):
    traces = []

    @jax.jit
    def f(surrogate, x):
        traces.append(None)
        return jax.vmap(jax.grad(surrogate))(x)

    rng = np.random.default_rng(5)
    for _ in range(3):
        p = sample_params(name, rng)
        got = f(cls_of(name)(**p), X7)
        np.testing.assert_allclose(got, grad64(name, np.asarray(X7), p), rtol=2e-5, atol=1e-6)
    assert len(traces) == 1


@pytest.mark.parametrize("name", NAMES)
def test_pickle_and_deepcopy_round_trip(name):
    p = sample_params(name, np.random.default_rng(6))
    arr = {k: jnp.full((7,), v, jnp.float32) for k, v in p.items() if k in numeric_params(name)}
    for obj in (cls_of(name)(**p), cls_of(name)(**dict(p, **arr))):
        for back in (pickle.loads(pickle.dumps(obj)), copy.deepcopy(obj), copy.copy(obj)):
            assert type(back) is type(obj) and back == obj and hash(back) == hash(obj)
            assert repr(back) == repr(obj)
            np.testing.assert_array_equal(
                jax.grad(lambda x: back(x).sum())(X7), jax.grad(lambda x: obj(x).sum())(X7)
            )


# -- base class, g, user subclasses ----------------------------------------------------------
def test_base_surrogate():
    base = sf.Surrogate()
    with pytest.raises(NotImplementedError):
        base(jnp.ones(3))
    with pytest.raises(NotImplementedError):
        base.surrogate_grad(jnp.ones(3))
    with pytest.raises(NotImplementedError):
        base.surrogate_fun(jnp.ones(3))
    assert base == sf.Surrogate()


@pytest.mark.parametrize("name", NO_G)
def test_shapes_without_g_raise(name):
    with pytest.raises(NotImplementedError):
        cls_of(name)().surrogate_fun(X7)


@pytest.mark.parametrize("name", WITH_G)
def test_shapes_with_g_return_an_array(name):
    out = cls_of(name)().surrogate_fun(X7)
    assert out.shape == X7.shape and out.dtype == jnp.float32


class Tanh(sf.Surrogate):
    """A user shape: g′ = α/2 (1 − tanh²(αx)), with a static int and a float parameter."""

    def __init__(self, alpha=2.0, order=1):
        super().__init__()
        self.alpha = alpha
        self.order = order  # a Python int: static

    def surrogate_grad(self, x):
        return self.order * self.alpha * 0.5 * (1 - jnp.tanh(self.alpha * x) ** 2)

    def surrogate_fun(self, x):
        return self.order * 0.5 * (jnp.tanh(self.alpha * x) + 1)


def _tanh_grad(x, alpha, order=1):
    return order * alpha * 0.5 / np.cosh(alpha * x) ** 2


def _tanh_grad2(x, alpha, order=1):
    return -order * alpha**2 * np.tanh(alpha * x) / np.cosh(alpha * x) ** 2


class GradOnly(sf.Surrogate):
    def __init__(self, width=1.0):
        super().__init__()
        self.width = width

    def surrogate_grad(self, x):
        return jnp.exp(-jnp.abs(x) / self.width)


def test_user_subclass_works_like_a_builtin():
    x = np.linspace(-3, 3, 13).astype(np.float32) + np.float32(0.01)
    xs = jnp.asarray(x)
    s = Tanh(1.5)
    np.testing.assert_array_equal(s(xs), (x >= 0).astype(np.float32))
    # (1 − tanh²) in f32 loses relative accuracy in the tails: compare at f32's level
    np.testing.assert_allclose(vgrad(s, xs), _tanh_grad(x, 1.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda x: vgrad(s, x))(xs), _tanh_grad(x, 1.5), rtol=1e-5, atol=1e-6)
    hess = jax.hessian(lambda x: s(x).sum())(xs)
    np.testing.assert_allclose(np.diag(hess), _tanh_grad2(x, 1.5), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(hess - jnp.diag(jnp.diag(hess)), 0)
    # pytree: alpha is a leaf, order is static
    assert jax.tree_util.tree_leaves(Tanh(1.5, 3)) == [1.5]
    np.testing.assert_allclose(vgrad(Tanh(1.5, 3), xs), _tanh_grad(x, 1.5, 3), rtol=1e-5, atol=1e-6)
    traces = []

    @jax.jit
    def f(surrogate, x):
        traces.append(None)
        return jax.vmap(jax.grad(surrogate))(x)

    for a in (0.5, 1.0, 2.0):
        np.testing.assert_allclose(f(Tanh(a), xs), _tanh_grad(x, a), rtol=1e-5, atol=1e-6)
    assert len(traces) == 1
    # vmap over the parameter through the pytree
    alphas = jnp.asarray([0.5, 1.0, 2.0])
    got = jax.vmap(lambda s: vgrad(s, xs))(Tanh(alphas))
    np.testing.assert_allclose(got, _tanh_grad(x[None], np.asarray(alphas)[:, None]), rtol=1e-5, atol=1e-6)
    # dH/dα = 0; ∂(dH/dx)/∂α through the user's g′
    assert jax.grad(lambda s: s(xs).sum())(s).alpha == 0
    d2 = jax.vmap(lambda x: jax.grad(lambda s: jax.grad(s)(x))(s).alpha)(xs)
    want = 0.5 / np.cosh(1.5 * x) ** 2 - 1.5 * x * np.tanh(1.5 * x) / np.cosh(1.5 * x) ** 2
    np.testing.assert_allclose(d2, want, rtol=1e-4, atol=1e-6)
    # jax.grad of the user's g is its g′; equality and pickling as for built-ins
    np.testing.assert_allclose(vgrad(s.surrogate_fun, xs), s.surrogate_grad(xs), rtol=1e-5, atol=1e-6)
    assert Tanh(1.5) == Tanh(1.5) and Tanh(1.5) != Tanh(1.5, 2) and hash(Tanh(1.5)) == hash(Tanh(1.5))
    assert pickle.loads(pickle.dumps(Tanh(1.5, 2))) == Tanh(1.5, 2)


def test_user_subclass_without_g():
    s = GradOnly(0.5)
    with pytest.raises(NotImplementedError):
        s.surrogate_fun(X7)
    np.testing.assert_allclose(vgrad(s, X7), np.exp(-np.abs(np.asarray(X7)) / 0.5), rtol=1e-6)


def test_subclass_without_surrogate_grad_raises_on_call():
    class Empty(sf.Surrogate):
        pass

    with pytest.raises(NotImplementedError):
        Empty()(X7)


# -- §7.1 strongly typed parameters with low-precision input ---------------------------------
def _strong(value):
    return jnp.float32(value)


def _all_transforms(s, fn, strong, x):
    ct = jnp.ones_like(x)
    return {
        "forward": s(x),
        "grad": jax.grad(lambda x: s(x).sum())(x),
        "jvp": jax.jvp(s, (x,), (ct,))[1],
        "vjp": jax.vjp(s, x)[1](ct)[0],
        "jacrev": jax.jacrev(s)(x),
        "linearize": jax.linearize(s, x)[1](ct),
        "hessian": jax.hessian(lambda x: s(x).sum())(x),
        "functional grad": jax.grad(lambda x: fn(x, **strong).sum())(x),
    }


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "f16"])
@pytest.mark.parametrize("name", NAMES)
def test_strongly_typed_params_keep_x_dtype(name, dtype):
    p = defaults(name)
    x = X7.astype(dtype)
    want = grad64(name, np.asarray(x, np.float64), p)
    for i, make in enumerate((jnp.float32, np.float32, lambda v: jnp.asarray(v, jnp.float32))):
        strong = {k: (make(v) if k in numeric_params(name) else v) for k, v in p.items()}
        s = cls_of(name)(**strong)
        eager = {"grad": jax.grad(lambda x: s(x).sum())(x), "vjp": jax.vjp(s, x)[1](x)[0]}
        # the whole transform list once per shape (jitted: one compile; the cast to x's dtype
        # is the same code for bf16 and f16), the eager paths for every parameter type
        full = i == 0 and (dtype == jnp.bfloat16 or name in ("Sigmoid", "SquarewaveFourierSeries", "MultiGaussianGrad"))
        traced = jax.jit(lambda s, x: _all_transforms(s, fn_of(name), strong, x))(s, x) if full else {}
        for what, out in {**eager, **traced}.items():
            assert out.dtype == dtype, (what, out.dtype)
        np.testing.assert_allclose(np.asarray(eager["grad"], np.float64), want, rtol=1e-2, atol=1e-3)


# -- §7.2 parameters that would broadcast beyond x ---------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_param_broadcasting_beyond_x_raises(name):
    first = numeric_params(name)[-1]
    p = defaults(name)
    cases = [((4,), (3,)), ((3, 1), (3,)), ((2,), ()), ((1, 3), (3,))]
    for pshape, xshape in cases:
        s = cls_of(name)(**dict(p, **{first: jnp.full(pshape, p[first], jnp.float32)}))
        x = jnp.ones(xshape, jnp.float32)
        for call in (s, jax.jit(s), lambda x: jax.grad(lambda x: s(x).sum())(x)):
            with pytest.raises(ValueError) as err:
                call(x)
            msg = str(err.value)
            assert first in msg and str(pshape) in msg and str(xshape) in msg, msg


def test_param_broadcasting_within_x_is_fine():
    alpha = jnp.asarray([1.0, 2.0, 4.0])
    x = jnp.linspace(-1, 1, 6).reshape(2, 3)
    got = jax.grad(lambda x: sf.Sigmoid(alpha)(x).sum())(x)
    want = grad64("Sigmoid", np.asarray(x), {"alpha": np.asarray(alpha)})
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# -- §7.3 impossible Python-scalar parameters -------------------------------------------------
IMPOSSIBLE = [
    ("PiecewiseQuadratic", {"alpha": 0.0}, "alpha"),
    ("PiecewiseQuadratic", {"alpha": 0}, "alpha"),
    ("NonzeroSignLog", {"alpha": 0.0}, "alpha"),
    ("PiecewiseLeakyRelu", {"w": 0.0}, "w"),
    ("GaussianGrad", {"sigma": 0.0}, "sigma"),
    ("GaussianGrad", {"sigma": -0.5}, "sigma"),
    ("QPseudoSpike", {"alpha": -1.0}, "alpha"),
    ("QPseudoSpike", {"alpha": -1}, "alpha"),
    ("SquarewaveFourierSeries", {"t_period": 0.0}, "t_period"),
    ("SquarewaveFourierSeries", {"n": 2.5}, "n"),
    ("SquarewaveFourierSeries", {"n": 2.0}, "n"),
    ("SquarewaveFourierSeries", {"n": "2"}, "n"),
    ("MultiGaussianGrad", {"sigma": 0.0}, "sigma"),
    ("MultiGaussianGrad", {"sigma": -1.0}, "sigma"),
    ("MultiGaussianGrad", {"s": 0.0}, "s"),
    ("MultiGaussianGrad", {"s": -2.0}, "s"),
    ("GaussianGrad", {"sigma": np.float32(0.0)}, "sigma"),
]


@pytest.mark.parametrize("name, bad, param", IMPOSSIBLE, ids=[f"{n}-{b}" for n, b, _ in IMPOSSIBLE])
def test_impossible_params_raise_at_construction(name, bad, param):
    with pytest.raises(ValueError) as err:
        cls_of(name)(**bad)
    msg = str(err.value)
    assert re.search(rf"\b{param}\b", msg), msg
    assert re.search(r"must|allowed|range|expected", msg), msg  # states what is allowed
    with pytest.raises(ValueError):  # the functional constructs the class
        fn_of(name)(X7, **bad)


def test_possible_edge_params_are_accepted():
    sf.GaussianGrad(sigma=1e-3)
    sf.QPseudoSpike(alpha=-0.5)
    sf.SquarewaveFourierSeries(n=np.int64(3))
    sf.SquarewaveFourierSeries(n=0)
    sf.PiecewiseQuadratic(alpha=-2.0)


# -- §7.4 input dtypes -----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_complex_and_bool_input_raise_type_error(name):
    s = cls_of(name)()
    for bad, word in (
        (jnp.asarray([1 + 2j, -1j]), "complex"),
        (np.asarray([1.0 + 0j]), "complex"),
        (1j, "complex"),
        (jnp.asarray([True, False]), "bool"),
        (np.asarray([True]), "bool"),
        (True, "bool"),
    ):
        with pytest.raises(TypeError, match=word):
            s(bad)
        with pytest.raises(TypeError, match=word):
            fn_of(name)(bad)
        with pytest.raises(TypeError, match=word):
            spikefuse.fire(bad, 0.0, s)


def test_integer_input_becomes_default_float():
    for x in (jnp.arange(-2, 3), np.arange(-2, 3, dtype=np.int8), [-2, -1, 0, 1, 2], 3, np.int64(-1)):
        out = sf.Sigmoid()(x)
        assert out.dtype == jnp.float32
        np.testing.assert_array_equal(out, (np.asarray(x) >= 0).astype(np.float32))
    with jax.enable_x64(True):
        assert sf.Sigmoid()(jnp.arange(3)).dtype == jnp.float64
        assert sf.Sigmoid()(np.arange(3, dtype=np.int32)).dtype == jnp.float64


_INPUTS = {
    "py_float": 0.5,
    "py_int": 1,
    "np_f32": np.float32(0.5),
    "np_f64_array": np.asarray([0.5, -0.5]),
    "jnp_f32": jnp.asarray([0.5, -0.5], jnp.float32),
    "jnp_weak": jnp.asarray(0.5),
    "bf16": jnp.asarray([0.5, -0.5], jnp.bfloat16),
    "f16": jnp.asarray([0.5, -0.5], jnp.float16),
    "int_array": jnp.asarray([1, -1]),
}


@pytest.mark.parametrize("kind", list(_INPUTS))
@pytest.mark.parametrize("name", ["Sigmoid", "SquarewaveFourierSeries", "MultiGaussianGrad"])
def test_dtype_and_weak_type_identical_eager_and_jit(name, kind):
    x = _INPUTS[kind]
    s = cls_of(name)()

    def both(f):
        e, j = f(x), jax.jit(f)(x)
        assert e.dtype == j.dtype, (e.dtype, j.dtype)
        assert e.weak_type == j.weak_type, (e.weak_type, j.weak_type)
        assert e.shape == j.shape
        return e, j

    e, j = both(s)
    np.testing.assert_array_equal(e, j)
    e, j = both(lambda x: fn_of(name)(x))
    if kind not in ("py_int", "int_array"):
        e, j = both(jax.grad(lambda x: s(x).sum()))
        np.testing.assert_array_equal(e, j)


# -- forward ---------------------------------------------------------------------------------
_DT = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}


@pytest.mark.parametrize("dt", list(_DT))
@pytest.mark.parametrize("name", NAMES)
def test_forward_special_values(name, dt):
    dtype = _DT[dt]
    x = jnp.asarray([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-3, -1e-3], dtype)
    want = np.asarray([1, 1, 1, 0, 0, 1, 0, 1, 0], np.float32)
    for f in (cls_of(name)(), jax.jit(cls_of(name)())):
        out = f(x)
        assert out.dtype == dtype and out.shape == x.shape
        np.testing.assert_array_equal(np.asarray(out, np.float32), want)


def test_forward_special_values_f64():
    with jax.enable_x64(True):
        x = jnp.asarray([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-300, -5e-300], jnp.float64)
        for name in NAMES:
            out = cls_of(name)()(x)
            assert out.dtype == jnp.float64
            np.testing.assert_array_equal(out, [1, 1, 1, 0, 0, 1, 0])


_SHAPE_CASES = [(n, sh) for n in NAMES for sh in [(), (2, 0, 3), (2, 3, 1, 2, 3)]] + [
    (n, sh) for n in ("Sigmoid", "SquarewaveFourierSeries", "LeakyRelu") for sh in [(0,), (1,)]
]


@pytest.mark.parametrize("name, shape", _SHAPE_CASES, ids=str)
def test_forward_and_grad_keep_shape(name, shape):
    rng = np.random.default_rng(8)
    x = rng.normal(size=shape).astype(np.float32)
    s = cls_of(name)()
    out = s(jnp.asarray(x))
    assert out.shape == shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, (x >= 0).astype(np.float32))
    g = jax.grad(lambda x: s(x).sum())(jnp.asarray(x))
    assert g.shape == shape
    np.testing.assert_allclose(g, grad64(name, x, defaults(name)).reshape(shape), rtol=2e-5, atol=1e-6)


# -- backend switch --------------------------------------------------------------------------
@pytest.fixture
def clean_backend(monkeypatch):
    """No configured backend and no environment variable; restores both afterwards."""
    monkeypatch.setattr(dispatch, "_global", None)
    monkeypatch.delenv("SPIKEFUSE_BACKEND", raising=False)
    yield monkeypatch


def test_backend_names():
    assert set(spikefuse.BACKENDS) == {"auto", "reference", "pallas", "pallas_triton",
                                       "pallas_mgpu", "interpret", "interpret_mgpu",
                                       "interpret_tpu"}


def test_default_backend_is_auto(clean_backend):
    assert spikefuse.get_backend() == "auto"


def test_set_backend(clean_backend):
    for name in ("reference", "interpret", "interpret_tpu", "interpret_mgpu", "pallas",
                 "pallas_triton", "pallas_mgpu", "auto"):
        spikefuse.set_backend(name)
        assert spikefuse.get_backend() == name
    spikefuse.set_backend("reference")
    np.testing.assert_array_equal(sf.Sigmoid()(X7), (np.asarray(X7) >= 0).astype(np.float32))


def test_use_backend_nests_and_restores(clean_backend):
    spikefuse.set_backend("reference")
    with spikefuse.use_backend("interpret"):
        assert spikefuse.get_backend() == "interpret"
        with spikefuse.use_backend("pallas"):
            assert spikefuse.get_backend() == "pallas"
        assert spikefuse.get_backend() == "interpret"
    assert spikefuse.get_backend() == "reference"
    with pytest.raises(RuntimeError, match="boom"):
        with spikefuse.use_backend("auto"):
            assert spikefuse.get_backend() == "auto"
            raise RuntimeError("boom")
    assert spikefuse.get_backend() == "reference"


def test_unknown_backend_raises(clean_backend):
    with pytest.raises(ValueError, match="cuda"):
        spikefuse.set_backend("cuda")
    with pytest.raises(ValueError, match="triton"):
        with spikefuse.use_backend("triton"):
            pass
    with pytest.raises(ValueError, match="nope"):
        spikefuse.fire(X7, 0.0, sf.Sigmoid(), backend="nope")
    assert spikefuse.get_backend() == "auto"


def test_env_var_is_read_at_call_time(clean_backend):
    clean_backend.setenv("SPIKEFUSE_BACKEND", "reference")
    assert spikefuse.get_backend() == "reference"
    clean_backend.setenv("SPIKEFUSE_BACKEND", "interpret")
    assert spikefuse.get_backend() == "interpret"
    with spikefuse.use_backend("reference"):  # explicit choices win over the variable
        assert spikefuse.get_backend() == "reference"
    spikefuse.set_backend("reference")
    assert spikefuse.get_backend() == "reference"


def test_env_var_invalid_value_names_the_variable(clean_backend):
    clean_backend.setenv("SPIKEFUSE_BACKEND", "warp-drive")
    with pytest.raises(ValueError, match="SPIKEFUSE_BACKEND"):
        spikefuse.get_backend()
    with pytest.raises(ValueError, match="SPIKEFUSE_BACKEND"):
        sf.Sigmoid()(X7)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="'auto' resolves per platform; this checks CPU")
def test_auto_is_reference_on_cpu(clean_backend):
    assert dispatch.resolve("auto") == "reference"
    assert dispatch.resolve(None) == "reference"
    jaxpr = str(jax.make_jaxpr(lambda x: sf.Sigmoid()(x))(X7))
    assert "reference" in jaxpr and "pallas" not in jaxpr


# -- spikefuse.fire --------------------------------------------------------------------------
_THRESHOLDS = {
    "python_scalar": lambda rng: 0.7,
    "f32_scalar": lambda rng: jnp.float32(-0.3),
    "per_element": lambda rng: jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
    "per_column": lambda rng: jnp.asarray(rng.normal(size=(5,)), jnp.float32),
}


@functools.partial(jax.jit, static_argnums=3)
def _fire_derivatives(s, v, thr, second_order):
    def fired(v, t):
        return spikefuse.fire(v, t, s).sum()

    def direct(v, t):
        return s(v - t).sum()

    out = {}
    for key, f in (("fire", fired), ("direct", direct)):
        out[key] = (
            jax.grad(f, argnums=(0, 1))(v, thr),
            jax.hessian(f, argnums=(0, 1))(v, thr) if second_order else (),
        )
    return out


# every shape with a scalar and a per-element threshold; the other two kinds (how θ
# broadcasts) do not depend on the shape, so three shapes cover them.
_FIRE_CASES = [(n, k) for n in NAMES for k in ("python_scalar", "per_element")] + [
    (n, k) for n in ("Sigmoid", "S2NN", "MultiGaussianGrad") for k in ("f32_scalar", "per_column")
]


@pytest.mark.parametrize("name, kind", _FIRE_CASES)
def test_fire_equals_surrogate_of_difference(name, kind):
    rng = np.random.default_rng(9)
    p = sample_params(name, rng)
    s = cls_of(name)(**p)
    v = jnp.asarray(rng.normal(size=(3, 4)) * 2, jnp.float32)
    thr = jnp.asarray(_THRESHOLDS[kind](rng), jnp.float32)
    if kind == "per_element":
        thr = thr[:3, :4]
    if kind == "per_column":
        thr = thr[:4]

    np.testing.assert_array_equal(spikefuse.fire(v, thr, s), s(v - thr))
    d = _fire_derivatives(s, v, thr, kind in ("per_element", "per_column"))
    (gv_f, gt_f), h_f = d["fire"]
    (gv_d, gt_d), h_d = d["direct"]
    np.testing.assert_allclose(gv_f, gv_d, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gt_f, gt_d, rtol=1e-5, atol=1e-6)
    # independently: d/dv = g′(v − θ); d/dθ = −g′(v − θ), summed where θ broadcasts
    gp = grad64(name, np.asarray(v - thr), p)
    np.testing.assert_allclose(gv_f, gp, rtol=2e-5, atol=1e-6)
    want_t = {"per_element": -gp, "per_column": -gp.sum(axis=0)}.get(kind, -gp.sum())
    assert gt_f.shape == thr.shape
    np.testing.assert_allclose(gt_f, want_t, rtol=1e-4, atol=1e-5)
    # second order (∂²/∂v², ∂²/∂v∂θ, ∂²/∂θ²) agrees with the unfused expression
    for a, b in zip(jax.tree_util.tree_leaves(h_f), jax.tree_util.tree_leaves(h_d)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fire_jvp_in_threshold():
    s = sf.Arctan(2.0)
    v = jnp.linspace(-2, 2, 9)
    thr = jnp.asarray(0.25)
    _, tan = jax.jvp(lambda t: spikefuse.fire(v, t, s), (thr,), (jnp.asarray(1.0),))
    np.testing.assert_allclose(tan, -grad64("Arctan", np.asarray(v - thr), {"alpha": 2.0}), rtol=1e-5)


def test_fire_default_surrogate_is_sigmoid():
    v = jnp.linspace(-2, 2, 9)
    np.testing.assert_array_equal(spikefuse.fire(v, 0.5), sf.Sigmoid()(v - 0.5))
    g = jax.grad(lambda v: spikefuse.fire(v, 0.5).sum())(v)
    np.testing.assert_allclose(g, grad64("Sigmoid", np.asarray(v - 0.5), {"alpha": 4.0}), rtol=1e-5, atol=1e-6)


def test_fire_rejects_a_non_surrogate():
    with pytest.raises(TypeError):
        spikefuse.fire(X7, 0.0, "sigmoid")
