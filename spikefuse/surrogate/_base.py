"""``Surrogate``: the base class of every surrogate shape, built-in or user-defined.

A surrogate object holds parameters and knows two jnp functions of ``x``:
``surrogate_grad`` (g′, used as dH/dx) and optionally ``surrogate_fun`` (g, for plotting).
Calling it gives the Heaviside spike with g′ as its derivative (see ``_spike.py``).

Objects are JAX pytrees. Numeric parameters are leaves, so a surrogate can be a non-static
``jit`` argument, its parameters can be traced, vmapped and differentiated through
second-order paths; structural parameters (Python ints such as the Fourier series' ``n``,
bools, strings) are static aux data.
"""

from __future__ import annotations

import copy
import dataclasses
import numbers
from collections.abc import Callable
from typing import Any, ClassVar, TypeGuard

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from spikefuse._checks import real_array

__all__ = ["Surrogate", "check_surrogate", "grad_fn"]


def _is_traced_or_array(v: object) -> TypeGuard[jax.Array | np.ndarray | np.generic]:
    return isinstance(v, (jax.Array, np.ndarray, np.generic))


def _is_numeric_leaf(v: object) -> bool:
    """Default leaf rule for user subclasses: floats and numeric arrays are traced."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, numbers.Integral) and not isinstance(v, np.generic):
        return False  # Python ints are structural by default (loop counts, orders)
    if isinstance(v, (float, complex)):
        return True
    if _is_traced_or_array(v):
        return bool(jnp.issubdtype(v.dtype, jnp.number))
    return False


class _Static:
    """Wraps a static value so the pytree aux data is always hashable."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def _key(self) -> tuple[bool, Any]:
        try:
            hash(self.value)
            return (True, self.value)
        except TypeError:
            return (False, id(self.value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _value_equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
        return False
    a_num, b_num = _is_traced_or_array(a) or isinstance(a, numbers.Number), _is_traced_or_array(
        b
    ) or isinstance(b, numbers.Number)
    if a_num and b_num:
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        return a_arr.shape == b_arr.shape and bool(np.array_equal(a_arr, b_arr))
    try:
        same = a == b
        return bool(same) if isinstance(same, (bool, np.bool_)) else False
    except Exception:
        return False


def _value_hash(v: Any) -> int:
    # Equal values must hash equal, and hashing must never raise: scalars (Python, numpy
    # or 0-d arrays) hash as their Python value, other arrays by shape only.
    if isinstance(v, jax.core.Tracer):
        return hash(("tracer", id(v)))
    if _is_traced_or_array(v):
        arr = np.asarray(v)
        return hash(arr.item()) if arr.ndim == 0 else hash(("array", arr.shape))
    try:
        return hash(v)
    except TypeError:
        return hash(("unhashable", type(v).__name__))


class Surrogate:
    r"""Base class of surrogate-gradient spike functions.

    Calling an instance on ``x`` returns the Heaviside spike

    .. math:: H(x) = 1 \text{ if } x \ge 0 \text{ else } 0

    in ``x``'s dtype, except under differentiation, where we take
    :math:`dH/dx = g'(x)` (``surrogate_grad``) and :math:`dH/d\theta = 0` for every
    parameter :math:`\theta`.

    To define a new shape, subclass, set parameters in ``__init__`` after
    ``super().__init__()``, and implement ``surrogate_grad(x)`` (and optionally
    ``surrogate_fun(x)``) with jnp operations::

        class Tanh(Surrogate):
            def __init__(self, alpha=2.0):
                super().__init__()
                self.alpha = alpha

            def surrogate_grad(self, x):
                return self.alpha * 0.5 * (1 - jnp.tanh(self.alpha * x) ** 2)

    Float and array attributes become traced pytree leaves; Python ints, bools and
    anything else are static. List names in the class attribute ``static_fields`` to
    force a numeric attribute to be static.
    """

    static_fields: ClassVar[tuple[str, ...]] = ()
    # Built-in shapes list their numeric parameters and their repr order explicitly.
    _param_fields: ClassVar[tuple[str, ...] | None] = None
    _repr_fields: ClassVar[tuple[str, ...] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_with_keys(
            cls, cls._tree_flatten_with_keys, cls._tree_unflatten, cls._tree_flatten
        )

    def __init__(self) -> None:
        pass

    # -- the maths ----------------------------------------------------------------------
    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        """g′(x), the derivative used for dH/dx."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement surrogate_grad(x); a Surrogate "
            "subclass must define it."
        )

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        """g(x), the smooth function whose derivative is g′ (plotting and analysis only)."""
        raise NotImplementedError(f"{type(self).__name__} defines no surrogate_fun (g); only g′.")

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Heaviside spike of ``x`` with surrogate gradient ``surrogate_grad``."""
        from spikefuse.surrogate._spike import spike

        return spike(x, self)

    # -- pytree -------------------------------------------------------------------------
    def _split_fields(self) -> tuple[list[str], list[str]]:
        fields = vars(self)
        declared = type(self)._param_fields
        leaves: list[str] = []
        static: list[str] = []
        for name, value in fields.items():
            if name in type(self).static_fields:
                static.append(name)
            elif declared is not None:
                (leaves if name in declared else static).append(name)
            elif _is_numeric_leaf(value):
                leaves.append(name)
            else:
                static.append(name)
        return leaves, static

    def _tree_flatten(self) -> tuple[list[Any], tuple[Any, ...]]:
        leaf_names, static_names = self._split_fields()
        fields = vars(self)
        aux = (
            tuple(leaf_names),
            tuple((n, _Static(fields[n])) for n in static_names),
            tuple(fields),  # attribute order, for a faithful round trip
        )
        return [fields[n] for n in leaf_names], aux

    def _tree_flatten_with_keys(self) -> tuple[list[tuple[Any, Any]], tuple[Any, ...]]:
        leaves, aux = self._tree_flatten()
        keys = [jax.tree_util.GetAttrKey(n) for n in aux[0]]
        return list(zip(keys, leaves)), aux

    @classmethod
    def _tree_unflatten(cls, aux: tuple[Any, ...], leaves: Any) -> Surrogate:
        leaf_names, static_items, order = aux
        values = dict(zip(leaf_names, leaves))
        values.update((n, s.value) for n, s in static_items)
        obj = object.__new__(cls)
        obj.__dict__.update((n, values[n]) for n in order)
        return obj

    # -- object protocol ----------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        mine, theirs = vars(self), vars(other)
        return mine.keys() == theirs.keys() and all(
            _value_equal(v, theirs[k]) for k, v in mine.items()
        )

    def __hash__(self) -> int:
        return hash((type(self), tuple((k, _value_hash(v)) for k, v in vars(self).items())))

    def __repr__(self) -> str:
        fields = vars(self)
        names = type(self)._repr_fields or tuple(fields)
        args = ", ".join(f"{n}={fields[n]}" for n in names if n in fields)
        return f"{type(self).__name__}({args})"


jax.tree_util.register_pytree_with_keys(
    Surrogate, Surrogate._tree_flatten_with_keys, Surrogate._tree_unflatten, Surrogate._tree_flatten
)


def check_surrogate(surrogate: object) -> Surrogate:
    """``surrogate`` itself if it can be used: a ``Surrogate`` instance (else ``TypeError``)
    whose class implements ``surrogate_grad`` (else ``NotImplementedError``)."""
    if not isinstance(surrogate, Surrogate):
        raise TypeError(
            "surrogate must be a spikefuse.surrogate.Surrogate instance, got "
            f"{type(surrogate).__name__}"
        )
    if type(surrogate).surrogate_grad is Surrogate.surrogate_grad:
        raise NotImplementedError(
            f"{type(surrogate).__name__} does not implement surrogate_grad(x); a Surrogate "
            "subclass must define it before it can be used."
        )
    return surrogate


@dataclasses.dataclass(frozen=True)
class _GradFn:
    """g′ of a surrogate structure as a function of ``(x, *leaves)``.

    Hashable and equal for surrogates of the same class and static structure, so it can be
    a static argument (of a primitive, a ``pallas_call`` body or ``jit``): the numeric
    parameters travel separately as traced operands and a new value never recompiles.
    """

    treedef: Any

    def __call__(self, x: ArrayLike, *leaves: Any) -> jax.Array:
        return jax.tree_util.tree_unflatten(self.treedef, leaves).surrogate_grad(x)


def grad_fn(surrogate: Surrogate) -> tuple[Callable[..., jax.Array], tuple[jax.Array, ...]]:
    """Splits ``surrogate`` into ``(fn, params)`` with ``fn(x, *params) == g′(x)``.

    ``fn`` is hashable (a static argument); ``params`` is the tuple of numeric parameters
    (the pytree leaves), to be passed as traced operands, e.g. into a kernel body.
    """
    check_surrogate(surrogate)
    # Every numeric parameter becomes a validated array (a list becomes an array; None, a
    # string, a bool or a complex number raise a TypeError naming the parameter), so the
    # pytree has exactly one leaf per parameter.
    leaf_names, _ = surrogate._split_fields()
    values = {
        name: real_array(getattr(surrogate, name), f"{type(surrogate).__name__}.{name}")
        for name in leaf_names
    }
    normalized = copy.copy(surrogate)
    normalized.__dict__.update(values)
    leaves, treedef = jax.tree_util.tree_flatten(normalized)
    return _GradFn(treedef), tuple(leaves)
