"""The 18 built-in surrogate shapes of braintools 0.4.0: final classes and functionals.

Each class stores its parameters under braintools' names, validates impossible Python-scalar
values at construction, and delegates its maths to ``formulas.py``. Each functional
``name(x, <params>)`` equals ``Name(<params>)(x)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.typing import ArrayLike

from spikefuse.surrogate import formulas as F
from spikefuse.surrogate._base import Surrogate

__all__ = [
    "Sigmoid",
    "sigmoid",
    "PiecewiseQuadratic",
    "piecewise_quadratic",
    "PiecewiseExp",
    "piecewise_exp",
    "SoftSign",
    "soft_sign",
    "Arctan",
    "arctan",
    "NonzeroSignLog",
    "nonzero_sign_log",
    "ERF",
    "erf",
    "PiecewiseLeakyRelu",
    "piecewise_leaky_relu",
    "SquarewaveFourierSeries",
    "squarewave_fourier_series",
    "S2NN",
    "s2nn",
    "QPseudoSpike",
    "q_pseudo_spike",
    "LeakyRelu",
    "leaky_relu",
    "LogTailedRelu",
    "log_tailed_relu",
    "ReluGrad",
    "relu_grad",
    "GaussianGrad",
    "gaussian_grad",
    "InvSquareGrad",
    "inv_square_grad",
    "MultiGaussianGrad",
    "multi_gaussian_grad",
    "SlayerGrad",
    "slayer_grad",
]


def _check(obj: Surrogate, name: str, ok: Callable[[Any], bool], allowed: str) -> None:
    """Rejects an impossible Python/numpy scalar parameter (traced or array values pass)."""
    value = getattr(obj, name)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (numbers.Real, np.generic)) and not isinstance(value, (bool, np.bool_)):
        if not ok(value):
            raise ValueError(f"{type(obj).__name__}: {name} must be {allowed}; got {value!r}")


class Sigmoid(Surrogate):
    r"""Sigmoid-shaped surrogate (the default).

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \alpha\,\sigma(\alpha x)(1-\sigma(\alpha x)),\quad g(x) = \sigma(\alpha x)

    Args:
      alpha: default 4.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import Sigmoid
      >>> Sigmoid()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha',)

    def __init__(self, alpha: ArrayLike = 4.0) -> None:
        super().__init__()
        self.alpha = alpha

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.sigmoid_grad(x, self.alpha)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.sigmoid_fun(x, self.alpha)


def sigmoid(x: ArrayLike, alpha: ArrayLike = 4.0) -> jax.Array:
    """Spike with the :class:`Sigmoid` surrogate gradient: ``Sigmoid(alpha=alpha)(x)``."""
    return Sigmoid(alpha=alpha)(x)


class PiecewiseQuadratic(Surrogate):
    r"""Triangle-shaped (piecewise quadratic g) surrogate.

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \alpha - \alpha^2|x| \text{ for } |x| \le 1/\alpha \text{, else } 0

    Args:
      alpha: default 1.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import PiecewiseQuadratic
      >>> PiecewiseQuadratic()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha',)

    def __init__(self, alpha: ArrayLike = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        _check(self, "alpha", lambda v: v != 0, "a nonzero number (the window is |x| <= 1/alpha)")

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.piecewise_quadratic_grad(x, self.alpha)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.piecewise_quadratic_fun(x, self.alpha)


def piecewise_quadratic(x: ArrayLike, alpha: ArrayLike = 1.0) -> jax.Array:
    """Spike with the :class:`PiecewiseQuadratic` surrogate gradient:
    ``PiecewiseQuadratic(alpha=alpha)(x)``."""
    return PiecewiseQuadratic(alpha=alpha)(x)


class PiecewiseExp(Surrogate):
    r"""Laplace-shaped (piecewise exponential g) surrogate.

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \tfrac{\alpha}{2} e^{-\alpha|x|}

    Args:
      alpha: default 1.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import PiecewiseExp
      >>> PiecewiseExp()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha',)

    def __init__(self, alpha: ArrayLike = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.piecewise_exp_grad(x, self.alpha)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.piecewise_exp_fun(x, self.alpha)


def piecewise_exp(x: ArrayLike, alpha: ArrayLike = 1.0) -> jax.Array:
    """Spike with the :class:`PiecewiseExp` surrogate gradient: ``PiecewiseExp(alpha=alpha)(x)``."""
    return PiecewiseExp(alpha=alpha)(x)


class SoftSign(Surrogate):
    r"""Soft-sign surrogate.

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math::

       g'(x) = \frac{\alpha}{2(1+|\alpha x|)^2},\quad
       g(x) = \tfrac12\big(1 + \tfrac{\alpha x}{1+|\alpha x|}\big)

    Args:
      alpha: default 1.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import SoftSign
      >>> SoftSign()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha',)

    def __init__(self, alpha: ArrayLike = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.soft_sign_grad(x, self.alpha)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.soft_sign_fun(x, self.alpha)


def soft_sign(x: ArrayLike, alpha: ArrayLike = 1.0) -> jax.Array:
    """Spike with the :class:`SoftSign` surrogate gradient: ``SoftSign(alpha=alpha)(x)``."""
    return SoftSign(alpha=alpha)(x)


class Arctan(Surrogate):
    r"""Arctangent surrogate (Cauchy-shaped g').

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math::

       g'(x) = \frac{\alpha}{2(1 + (\pi\alpha x/2)^2)},\quad
       g(x) = \arctan(\pi\alpha x/2)/\pi + \tfrac12

    Args:
      alpha: default 1.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import Arctan
      >>> Arctan()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha',)

    def __init__(self, alpha: ArrayLike = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.arctan_grad(x, self.alpha)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.arctan_fun(x, self.alpha)


def arctan(x: ArrayLike, alpha: ArrayLike = 1.0) -> jax.Array:
    """Spike with the :class:`Arctan` surrogate gradient: ``Arctan(alpha=alpha)(x)``."""
    return Arctan(alpha=alpha)(x)


class NonzeroSignLog(Surrogate):
    r"""Nonzero-sign-log surrogate.

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \frac{1}{1/\alpha + |x|},\quad g(x) = \mathrm{sign}^+(x)\ln(1+|\alpha x|)

    Args:
      alpha: default 1.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import NonzeroSignLog
      >>> NonzeroSignLog()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha',)

    def __init__(self, alpha: ArrayLike = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        _check(self, "alpha", lambda v: v != 0, "a nonzero number (g' divides by 1/alpha)")

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.nonzero_sign_log_grad(x, self.alpha)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.nonzero_sign_log_fun(x, self.alpha)


def nonzero_sign_log(x: ArrayLike, alpha: ArrayLike = 1.0) -> jax.Array:
    """Spike with the :class:`NonzeroSignLog` surrogate gradient:
    ``NonzeroSignLog(alpha=alpha)(x)``."""
    return NonzeroSignLog(alpha=alpha)(x)


class ERF(Surrogate):
    r"""Error-function surrogate (Gaussian-shaped g').

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math::

       g'(x) = \frac{\alpha}{\sqrt\pi} e^{-\alpha^2x^2},\quad
       g(x) = \tfrac12\,\mathrm{erfc}(-\alpha x)

    Args:
      alpha: default 1.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import ERF
      >>> ERF()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha',)

    def __init__(self, alpha: ArrayLike = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.erf_grad(x, self.alpha)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.erf_fun(x, self.alpha)


def erf(x: ArrayLike, alpha: ArrayLike = 1.0) -> jax.Array:
    """Spike with the :class:`ERF` surrogate gradient: ``ERF(alpha=alpha)(x)``."""
    return ERF(alpha=alpha)(x)


class PiecewiseLeakyRelu(Surrogate):
    r"""Piecewise leaky-ReLU surrogate.

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \frac{1}{2w} \text{ for } |x| \le w \text{, else } c

    Args:
      c: default 0.01.
      w: default 1.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import PiecewiseLeakyRelu
      >>> PiecewiseLeakyRelu()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('c', 'w')

    def __init__(self, c: ArrayLike = 0.01, w: ArrayLike = 1.0) -> None:
        super().__init__()
        self.c = c
        self.w = w
        _check(self, "w", lambda v: v != 0, "a nonzero number (g' is 1/(2w) inside the window)")

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.piecewise_leaky_relu_grad(x, self.c, self.w)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.piecewise_leaky_relu_fun(x, self.c, self.w)


def piecewise_leaky_relu(x: ArrayLike, c: ArrayLike = 0.01, w: ArrayLike = 1.0) -> jax.Array:
    """Spike with the :class:`PiecewiseLeakyRelu` surrogate gradient:
    ``PiecewiseLeakyRelu(c=c, w=w)(x)``."""
    return PiecewiseLeakyRelu(c=c, w=w)(x)


class SquarewaveFourierSeries(Surrogate):
    r"""Square-wave Fourier-series surrogate (periodic; g' can be negative).

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \frac{4}{T}\sum_{i=1}^{\max(n,1)} \cos((2i-1)\omega x),\ \omega = 2\pi/T

    Args:
      n: default 2.
      t_period: default 8.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import SquarewaveFourierSeries
      >>> SquarewaveFourierSeries()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('t_period',)

    def __init__(self, n: int = 2, t_period: ArrayLike = 8.0) -> None:
        super().__init__()
        self.n = n
        self.t_period = t_period
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise ValueError(
                f"SquarewaveFourierSeries: n must be a Python int (the number of terms, static); "
                f"got {n!r} of type {type(n).__name__}"
            )
        self.n = int(n)
        _check(self, "t_period", lambda v: v != 0, "a nonzero number (omega = 2*pi/t_period)")

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.squarewave_fourier_series_grad(x, self.t_period, n=self.n)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.squarewave_fourier_series_fun(x, self.t_period, n=self.n)


def squarewave_fourier_series(x: ArrayLike, n: int = 2, t_period: ArrayLike = 8.0) -> jax.Array:
    """Spike with the :class:`SquarewaveFourierSeries` surrogate gradient:
    ``SquarewaveFourierSeries(n=n, t_period=t_period)(x)``."""
    return SquarewaveFourierSeries(n=n, t_period=t_period)(x)


class S2NN(Surrogate):
    r"""S2NN surrogate (sigmoid left, log right; epsilon enters g only).

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math::

       g'(x) = \alpha\sigma(\alpha x)(1-\sigma(\alpha x)) \text{ for } x<0,
       \ \frac{\beta}{x+1} \text{ for } x \ge 0

    Args:
      alpha: default 4.0.
      beta: default 1.0.
      epsilon: default 1e-8.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import S2NN
      >>> S2NN()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha', 'beta', 'epsilon')

    def __init__(self, alpha: ArrayLike = 4.0, beta: ArrayLike = 1.0,
                 epsilon: ArrayLike = 1e-8) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.epsilon = epsilon

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.s2nn_grad(x, self.alpha, self.beta, self.epsilon)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.s2nn_fun(x, self.alpha, self.beta, self.epsilon)


def s2nn(x: ArrayLike, alpha: ArrayLike = 4.0, beta: ArrayLike = 1.0,
         epsilon: ArrayLike = 1e-8) -> jax.Array:
    """Spike with the :class:`S2NN` surrogate gradient:
    ``S2NN(alpha=alpha, beta=beta, epsilon=epsilon)(x)``."""
    return S2NN(alpha=alpha, beta=beta, epsilon=epsilon)(x)


class QPseudoSpike(Surrogate):
    r"""q-PseudoSpike surrogate (heavy-tailed).

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \Big(1 + \frac{2|x|}{\alpha+1}\Big)^{-\alpha}

    Args:
      alpha: default 2.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import QPseudoSpike
      >>> QPseudoSpike()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha',)

    def __init__(self, alpha: ArrayLike = 2.0) -> None:
        super().__init__()
        self.alpha = alpha
        _check(self, "alpha", lambda v: v != -1, "any number except -1 (g' divides by alpha + 1)")

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.q_pseudo_spike_grad(x, self.alpha)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.q_pseudo_spike_fun(x, self.alpha)


def q_pseudo_spike(x: ArrayLike, alpha: ArrayLike = 2.0) -> jax.Array:
    """Spike with the :class:`QPseudoSpike` surrogate gradient: ``QPseudoSpike(alpha=alpha)(x)``."""
    return QPseudoSpike(alpha=alpha)(x)


class LeakyRelu(Surrogate):
    r"""Leaky-ReLU surrogate.

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \alpha \text{ for } x<0,\ \beta \text{ for } x\ge0

    Args:
      alpha: default 0.1.
      beta: default 1.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import LeakyRelu
      >>> LeakyRelu()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha', 'beta')

    def __init__(self, alpha: ArrayLike = 0.1, beta: ArrayLike = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.leaky_relu_grad(x, self.alpha, self.beta)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.leaky_relu_fun(x, self.alpha, self.beta)


def leaky_relu(x: ArrayLike, alpha: ArrayLike = 0.1, beta: ArrayLike = 1.0) -> jax.Array:
    """Spike with the :class:`LeakyRelu` surrogate gradient:
    ``LeakyRelu(alpha=alpha, beta=beta)(x)``."""
    return LeakyRelu(alpha=alpha, beta=beta)(x)


class LogTailedRelu(Surrogate):
    r"""Log-tailed ReLU surrogate.

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \alpha \ (x\le0),\ 1 \ (0<x\le1),\ 1/x \ (x>1)

    Args:
      alpha: default 0.0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import LogTailedRelu
      >>> LogTailedRelu()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha',)

    def __init__(self, alpha: ArrayLike = 0.0) -> None:
        super().__init__()
        self.alpha = alpha

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.log_tailed_relu_grad(x, self.alpha)

    def surrogate_fun(self, x: ArrayLike) -> jax.Array:
        return F.log_tailed_relu_fun(x, self.alpha)


def log_tailed_relu(x: ArrayLike, alpha: ArrayLike = 0.0) -> jax.Array:
    """Spike with the :class:`LogTailedRelu` surrogate gradient:
    ``LogTailedRelu(alpha=alpha)(x)``."""
    return LogTailedRelu(alpha=alpha)(x)


class ReluGrad(Surrogate):
    r"""ReLU-shaped (triangle) gradient.

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \alpha\max(0, \mathrm{width} - |x|)

    Args:
      alpha: default 0.3.
      width: default 1.0.

    ``surrogate_fun`` is not defined for this shape (it raises ``NotImplementedError``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import ReluGrad
      >>> ReluGrad()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha', 'width')

    def __init__(self, alpha: ArrayLike = 0.3, width: ArrayLike = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.width = width

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.relu_grad_grad(x, self.alpha, self.width)


def relu_grad(x: ArrayLike, alpha: ArrayLike = 0.3, width: ArrayLike = 1.0) -> jax.Array:
    """Spike with the :class:`ReluGrad` surrogate gradient:
    ``ReluGrad(alpha=alpha, width=width)(x)``."""
    return ReluGrad(alpha=alpha, width=width)(x)


class GaussianGrad(Surrogate):
    r"""Gaussian gradient.

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \alpha\,\mathcal N(x; 0, \sigma^2)

    Args:
      sigma: default 0.5.
      alpha: default 0.5.

    ``surrogate_fun`` is not defined for this shape (it raises ``NotImplementedError``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import GaussianGrad
      >>> GaussianGrad()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('sigma', 'alpha')
    _repr_fields = ('alpha', 'sigma')

    def __init__(self, sigma: ArrayLike = 0.5, alpha: ArrayLike = 0.5) -> None:
        super().__init__()
        self.sigma = sigma
        self.alpha = alpha
        _check(self, "sigma", lambda v: v > 0,
               "a positive number (the Gaussian's standard deviation)")

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.gaussian_grad_grad(x, self.sigma, self.alpha)


def gaussian_grad(x: ArrayLike, sigma: ArrayLike = 0.5, alpha: ArrayLike = 0.5) -> jax.Array:
    """Spike with the :class:`GaussianGrad` surrogate gradient:
    ``GaussianGrad(sigma=sigma, alpha=alpha)(x)``."""
    return GaussianGrad(sigma=sigma, alpha=alpha)(x)


class InvSquareGrad(Surrogate):
    r"""Inverse-square gradient.

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = \frac{1}{(\alpha|x|+1)^2}

    Args:
      alpha: default 100.0.

    ``surrogate_fun`` is not defined for this shape (it raises ``NotImplementedError``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import InvSquareGrad
      >>> InvSquareGrad()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha',)

    def __init__(self, alpha: ArrayLike = 100.0) -> None:
        super().__init__()
        self.alpha = alpha

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.inv_square_grad_grad(x, self.alpha)


def inv_square_grad(x: ArrayLike, alpha: ArrayLike = 100.0) -> jax.Array:
    """Spike with the :class:`InvSquareGrad` surrogate gradient:
    ``InvSquareGrad(alpha=alpha)(x)``."""
    return InvSquareGrad(alpha=alpha)(x)


class MultiGaussianGrad(Surrogate):
    r"""Multi-Gaussian gradient (negative side lobes).

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math::

       g'(x) = \mathrm{scale}\,[(1+h)\mathcal N(x;0,\sigma^2)
       - h\mathcal N(x;\sigma,(s\sigma)^2) - h\mathcal N(x;-\sigma,(s\sigma)^2)]

    Args:
      h: default 0.15.
      s: default 6.0.
      sigma: default 0.5.
      scale: default 0.5.

    ``surrogate_fun`` is not defined for this shape (it raises ``NotImplementedError``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import MultiGaussianGrad
      >>> MultiGaussianGrad()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('h', 's', 'sigma', 'scale')

    def __init__(self, h: ArrayLike = 0.15, s: ArrayLike = 6.0, sigma: ArrayLike = 0.5,
                 scale: ArrayLike = 0.5) -> None:
        super().__init__()
        self.h = h
        self.s = s
        self.sigma = sigma
        self.scale = scale
        _check(self, "sigma", lambda v: v > 0,
               "a positive number (the Gaussians' standard deviation)")
        _check(self, "s", lambda v: v > 0, "a positive number (the side lobes' width factor)")

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.multi_gaussian_grad_grad(x, self.h, self.s, self.sigma, self.scale)


def multi_gaussian_grad(x: ArrayLike, h: ArrayLike = 0.15, s: ArrayLike = 6.0,
                        sigma: ArrayLike = 0.5, scale: ArrayLike = 0.5) -> jax.Array:
    """Spike with the :class:`MultiGaussianGrad` surrogate gradient:
    ``MultiGaussianGrad(h=h, s=s, sigma=sigma, scale=scale)(x)``."""
    return MultiGaussianGrad(h=h, s=s, sigma=sigma, scale=scale)(x)


class SlayerGrad(Surrogate):
    r"""SLAYER's exponential gradient.

    Forward: :math:`H(x) = [x \ge 0]`. Under differentiation we take dH/dx = g′(x) and
    dH/d(parameter) = 0, where

    .. math:: g'(x) = e^{-\alpha|x|}

    Args:
      alpha: default 1.0.

    ``surrogate_fun`` is not defined for this shape (it raises ``NotImplementedError``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.surrogate import SlayerGrad
      >>> SlayerGrad()(jnp.array([-1.0, 0.0, 1.0]))
      Array([0., 1., 1.], dtype=float32)
    """

    _param_fields = ('alpha',)

    def __init__(self, alpha: ArrayLike = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def surrogate_grad(self, x: ArrayLike) -> jax.Array:
        return F.slayer_grad_grad(x, self.alpha)


def slayer_grad(x: ArrayLike, alpha: ArrayLike = 1.0) -> jax.Array:
    """Spike with the :class:`SlayerGrad` surrogate gradient: ``SlayerGrad(alpha=alpha)(x)``."""
    return SlayerGrad(alpha=alpha)(x)
