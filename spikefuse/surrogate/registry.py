"""One spec per built-in shape — read by ``get``/``names``, the tests and the benchmarks.

``sample`` gives the range of valid random parameters used by property tests and parity
checks (low, high) per numeric parameter; ``has_fun`` says whether g is defined.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax

from spikefuse.surrogate import _impl
from spikefuse.surrogate._base import Surrogate


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """A built-in shape: its class and functional, and what tests and benchmarks need."""

    cls: type[Surrogate]
    functional: Callable[..., jax.Array]
    defaults: dict[str, Any]  # constructor parameters in order, with defaults
    has_fun: bool
    sample: dict[str, tuple[float, float]]  # parameter -> (low, high) for random valid values

    @property
    def name(self) -> str:
        return self.cls.__name__


def _spec(cls: type[Surrogate], functional: Callable[..., jax.Array], has_fun: bool,
          **sample: tuple[float, float]) -> ShapeSpec:
    params = inspect.signature(cls.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k != "self"}
    return ShapeSpec(cls, functional, defaults, has_fun, sample)


SHAPES: tuple[ShapeSpec, ...] = (
    _spec(_impl.Sigmoid, _impl.sigmoid, True, alpha=(0.5, 8.0)),
    _spec(_impl.PiecewiseQuadratic, _impl.piecewise_quadratic, True, alpha=(0.3, 3.0)),
    _spec(_impl.PiecewiseExp, _impl.piecewise_exp, True, alpha=(0.3, 4.0)),
    _spec(_impl.SoftSign, _impl.soft_sign, True, alpha=(0.3, 4.0)),
    _spec(_impl.Arctan, _impl.arctan, True, alpha=(0.3, 4.0)),
    _spec(_impl.NonzeroSignLog, _impl.nonzero_sign_log, True, alpha=(0.3, 4.0)),
    _spec(_impl.ERF, _impl.erf, True, alpha=(0.3, 4.0)),
    _spec(_impl.PiecewiseLeakyRelu, _impl.piecewise_leaky_relu, True, c=(0.0, 0.2), w=(0.3, 2.0)),
    _spec(_impl.SquarewaveFourierSeries, _impl.squarewave_fourier_series, True,
          t_period=(2.0, 16.0)),
    _spec(_impl.S2NN, _impl.s2nn, True, alpha=(0.5, 8.0), beta=(0.2, 2.0), epsilon=(1e-9, 1e-6)),
    _spec(_impl.QPseudoSpike, _impl.q_pseudo_spike, True, alpha=(0.5, 4.0)),
    _spec(_impl.LeakyRelu, _impl.leaky_relu, True, alpha=(0.0, 0.5), beta=(0.5, 2.0)),
    _spec(_impl.LogTailedRelu, _impl.log_tailed_relu, True, alpha=(0.0, 0.5)),
    _spec(_impl.ReluGrad, _impl.relu_grad, False, alpha=(0.1, 2.0), width=(0.3, 2.0)),
    _spec(_impl.GaussianGrad, _impl.gaussian_grad, False, sigma=(0.2, 2.0), alpha=(0.1, 2.0)),
    _spec(_impl.InvSquareGrad, _impl.inv_square_grad, False, alpha=(1.0, 200.0)),
    _spec(
        _impl.MultiGaussianGrad,
        _impl.multi_gaussian_grad,
        False,
        h=(0.0, 0.5),
        s=(1.0, 8.0),
        sigma=(0.2, 1.0),
        scale=(0.1, 1.0),
    ),
    _spec(_impl.SlayerGrad, _impl.slayer_grad, False, alpha=(0.3, 4.0)),
)

_LOOKUP: dict[str, ShapeSpec] = {}
for _s in SHAPES:
    _LOOKUP[_s.name.lower()] = _s
    _LOOKUP[_s.functional.__name__.lower()] = _s


def names() -> list[str]:
    """The 18 built-in shape class names, in braintools' order."""
    return [s.name for s in SHAPES]


def spec(name: str) -> ShapeSpec:
    """The spec of a shape by class or functional name (case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    try:
        return _LOOKUP[name.strip().lower()]
    except KeyError:
        valid = ", ".join(f"{s.name}/{s.functional.__name__}" for s in SHAPES)
        raise ValueError(f"unknown surrogate {name!r}; valid names: {valid}") from None


def get(name: str, **params: Any) -> Surrogate:
    """Builds a shape by class or functional name: ``get("sigmoid", alpha=2.0)``."""
    shape = spec(name)
    unknown = set(params) - set(shape.defaults)
    if unknown:
        raise TypeError(
            f"{shape.name} takes parameters {tuple(shape.defaults)}; "
            f"got unexpected {sorted(unknown)}"
        )
    return shape.cls(**params)
