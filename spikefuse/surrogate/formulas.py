"""One pure jnp function per surrogate shape: the single source of truth.

Each shape has ``<name>_grad(x, *params)`` — the surrogate derivative g′(x) used as
dH/dx — and, where the shape defines one, ``<name>_fun(x, *params)`` — the smooth
primitive g(x), for plotting and analysis only.

These functions are traced three ways: by the classes in ``_impl.py`` (``surrogate_grad``
and ``surrogate_fun``), by the reference backend, and inside the Pallas kernel bodies. So
they use only elementwise jnp/lax operations that the Pallas Triton lowering accepts (no
``lax.erf`` in a g′, no gathers), accept scalar or array parameters that broadcast against
``x``, and never produce inf/NaN from a branch that ``jnp.where`` discards: every dead branch
is evaluated on a guarded input, also so that second derivatives stay finite.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp

# Beyond |z| = 40 a standard-normal density is exp(-800): 0 in every float dtype, and so is
# each of its derivatives. Clipping z there keeps z**2 and the chain rule's -z * exp(...)
# finite for inputs up to the largest finite float, without changing any value.
_GAUSS_CLIP = 40.0
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_SQRT_PI = math.sqrt(math.pi)


def _saturate(z, bound):
    """z limited to [-bound, bound] by selection rather than min/max: forward-mode
    differentiation then drops the (possibly infinite) tangent of a saturated z, where
    min/max would multiply it by 0 (inf * 0 = NaN), e.g. d/dsigma of x/sigma at x ~ 3e38."""
    return jnp.where(z > bound, bound, jnp.where(z < -bound, -bound, z))


def _std_normal(z):
    z = _saturate(z, _GAUSS_CLIP)
    return jnp.exp(-0.5 * z * z)


def _normal_pdf(x, mu, s):
    """N(x; mu, s^2) = exp(-(x-mu)^2 / (2 s^2)) / (s sqrt(2 pi))."""
    return _std_normal((x - mu) / s) / (s * _SQRT_2PI)


def _logistic(z):
    # lax.logistic: stable for every finite z (σ saturates to exactly 0 or 1, never
    # overflows), its derivative σ(1-σ) too, and the Triton lowering accepts it.
    return jax.nn.sigmoid(z)


# 1. Sigmoid ------------------------------------------------------------------------------
def sigmoid_grad(x, alpha):
    s = _logistic(alpha * x)
    return alpha * s * (1.0 - s)


def sigmoid_fun(x, alpha):
    return _logistic(alpha * x)


# 2. PiecewiseQuadratic -------------------------------------------------------------------
def piecewise_quadratic_grad(x, alpha):
    ax = jnp.abs(x)
    return jnp.where(ax > 1.0 / alpha, 0.0, alpha - alpha * alpha * ax)


def piecewise_quadratic_fun(x, alpha):
    inner = (1.0 - alpha * jnp.abs(x) / 2.0) * alpha * x + 0.5
    return jnp.where(x < -1.0 / alpha, 0.0, jnp.where(x > 1.0 / alpha, 1.0, inner))


# 3. PiecewiseExp -------------------------------------------------------------------------
def piecewise_exp_grad(x, alpha):
    return (alpha / 2.0) * jnp.exp(-alpha * jnp.abs(x))


def piecewise_exp_fun(x, alpha):
    # Each branch is evaluated on the half-line where it is used, so neither overflows.
    neg = jnp.minimum(x, 0.0)
    pos = jnp.maximum(x, 0.0)
    return jnp.where(x < 0, jnp.exp(alpha * neg) / 2.0, 1.0 - jnp.exp(-alpha * pos) / 2.0)


# 4. SoftSign -----------------------------------------------------------------------------
def soft_sign_grad(x, alpha):
    r = 1.0 / (1.0 + jnp.abs(alpha * x))
    return alpha * 0.5 * r * r


def soft_sign_fun(x, alpha):
    ax = alpha * x
    return 0.5 * (1.0 + ax / (1.0 + jnp.abs(ax)))


# 5. Arctan -------------------------------------------------------------------------------
def arctan_grad(x, alpha):
    # Saturate u (by selection, see _saturate) so it stays finite for x up to the largest
    # float: past |u| = 1e30, u*u is inf in f32 and the value 0 either way, but an infinite
    # u itself would turn the derivative -2u/(1+u^2)^2 into inf * 0 = NaN.
    u = _saturate((math.pi / 2.0) * alpha * x, 1e30)
    return alpha * 0.5 / (1.0 + u * u)


def arctan_fun(x, alpha):
    return jnp.arctan((math.pi / 2.0) * alpha * x) / math.pi + 0.5


# 6. NonzeroSignLog -----------------------------------------------------------------------
def nonzero_sign_log_grad(x, alpha):
    return 1.0 / (1.0 / alpha + jnp.abs(x))


def nonzero_sign_log_fun(x, alpha):
    return jnp.where(x < 0, -1.0, 1.0) * jnp.log1p(jnp.abs(alpha * x))


# 7. ERF ----------------------------------------------------------------------------------
def erf_grad(x, alpha):
    # (α/√π)·exp(-α²x²) = (α/√π)·exp(-z²/2) with z = √2·αx:
    # the clipped form stays finite.
    return (alpha / _SQRT_PI) * _std_normal(math.sqrt(2.0) * alpha * x)


def erf_fun(x, alpha):
    return 0.5 * jsp.erfc(-alpha * x)


# 8. PiecewiseLeakyRelu -------------------------------------------------------------------
def piecewise_leaky_relu_grad(x, c, w):
    return jnp.where(jnp.abs(x) > w, c, 1.0 / (2.0 * w))


def piecewise_leaky_relu_fun(x, c, w):
    return jnp.where(
        x < -w, c * x + c * w, jnp.where(x > w, c * x - c * w + 1.0, 0.5 * x / w + 0.5)
    )


# 9. SquarewaveFourierSeries (n is a static Python int) ----------------------------------
# Near the largest float, (2i-1)·ω·x overflows to inf and cos(inf) is NaN. g′ and g have
# period t_period and fmod is exact, so beyond |x| = 2**100 (where no float32 digit of the
# phase is left anyway) x is first reduced modulo the period; below it x is used as is.
_FOURIER_REDUCE_ABOVE = 2.0**100


def _fourier_x(x, t_period):
    return jnp.where(jnp.abs(x) > _FOURIER_REDUCE_ABOVE, jnp.fmod(x, t_period), x)


def squarewave_fourier_series_grad(x, t_period, *, n):
    x = _fourier_x(x, t_period)
    w = 2.0 * math.pi / t_period
    total = jnp.cos(w * x)
    for i in range(2, max(n, 1) + 1):
        total = total + jnp.cos((2 * i - 1) * w * x)
    return total * (4.0 / t_period)


def squarewave_fourier_series_fun(x, t_period, *, n):
    x = _fourier_x(x, t_period)
    w = 2.0 * math.pi / t_period
    total = jnp.sin(w * x)
    for i in range(2, max(n, 1) + 1):
        c = 2 * i - 1
        total = total + jnp.sin(c * w * x) / c
    return 0.5 + (2.0 / math.pi) * total


# 10. S2NN --------------------------------------------------------------------------------
def s2nn_grad(x, alpha, beta, epsilon):
    del epsilon  # enters g only
    s = _logistic(alpha * x)
    x_pos = jnp.where(x < 0, 1.0, x)  # the x >= 0 branch, kept finite at x = -1
    return jnp.where(x < 0, alpha * s * (1.0 - s), beta / (x_pos + 1.0))


def s2nn_fun(x, alpha, beta, epsilon):
    x_pos = jnp.where(x < 0, 1.0, x)
    return jnp.where(x < 0, _logistic(alpha * x),
                     beta * jnp.log(jnp.abs(x_pos + 1.0) + epsilon) + 0.5)


# 11. QPseudoSpike ------------------------------------------------------------------------
# Beyond |x| = 2**100 the base 1 + 2|x|/(α+1) can overflow to inf, and ∂/∂α of base**-α
# is then -log(inf)·0 = NaN; there g′ is evaluated as exp(-α·(log|x| + log(k + 1/|x|))),
# the same value with every intermediate finite. Below it, the plain power (as braintools).
_Q_LOG_ABOVE = 2.0**100


def q_pseudo_spike_grad(x, alpha):
    u = jnp.abs(x)
    big = u > _Q_LOG_ABOVE
    k = 2.0 / (alpha + 1.0)
    u_small = jnp.where(big, 0.0, u)
    u_big = jnp.where(big, u, _Q_LOG_ABOVE)
    small = jnp.power(1.0 + k * u_small, -alpha)
    large = jnp.exp(-alpha * (jnp.log(u_big) + jnp.log(k + 1.0 / u_big)))
    return jnp.where(big, large, small)


def q_pseudo_spike_fun(x, alpha):
    base = 1.0 + 2.0 / (alpha + 1.0) * jnp.abs(x)
    one_minus_a = 1.0 - alpha
    is_log = one_minus_a == 0
    safe = jnp.where(is_log, 1.0, one_minus_a)
    integral = jnp.where(
        is_log,
        (alpha + 1.0) / 2.0 * jnp.log(base),
        (alpha + 1.0) / (2.0 * safe) * (jnp.power(base, one_minus_a) - 1.0),
    )
    return 0.5 + jnp.sign(x) * integral


# 12. LeakyRelu ---------------------------------------------------------------------------
def leaky_relu_grad(x, alpha, beta):
    return jnp.where(x < 0, alpha, beta) * jnp.ones_like(x)


def leaky_relu_fun(x, alpha, beta):
    return jnp.where(x < 0, alpha * x, beta * x)


# 13. LogTailedRelu -----------------------------------------------------------------------
def log_tailed_relu_grad(x, alpha):
    x_tail = jnp.where(x > 1, x, 1.0)  # 1/x only where x > 1
    return jnp.where(x > 1, 1.0 / x_tail, jnp.where(x > 0, 1.0, alpha))


def log_tailed_relu_fun(x, alpha):
    x_tail = jnp.where(x > 1, x, 1.0)
    return jnp.where(x > 1, 1.0 + jnp.log(x_tail), jnp.where(x > 0, x, alpha * x))


# 14. ReluGrad (no g) ---------------------------------------------------------------------
def relu_grad_grad(x, alpha, width):
    return alpha * jnp.maximum(width - jnp.abs(x), 0.0)


# 15. GaussianGrad (no g) -----------------------------------------------------------------
def gaussian_grad_grad(x, sigma, alpha):
    return alpha * _normal_pdf(x, 0.0, sigma)


# 16. InvSquareGrad (no g) ----------------------------------------------------------------
def inv_square_grad_grad(x, alpha):
    r = 1.0 / (alpha * jnp.abs(x) + 1.0)
    return r * r


# 17. MultiGaussianGrad (no g) ------------------------------------------------------------
def multi_gaussian_grad_grad(x, h, s, sigma, scale):
    g1 = _normal_pdf(x, 0.0, sigma)
    g2 = _normal_pdf(x, sigma, s * sigma)
    g3 = _normal_pdf(x, -sigma, s * sigma)
    return scale * ((1.0 + h) * g1 - h * g2 - h * g3)


# 18. SlayerGrad (no g) -------------------------------------------------------------------
def slayer_grad_grad(x, alpha):
    return jnp.exp(-alpha * jnp.abs(x))


