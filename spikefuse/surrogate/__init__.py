"""spikefuse.surrogate — a drop-in replacement for ``braintools.surrogate`` (0.4.0).

Change ``import braintools.surrogate as surrogate`` to ``import spikefuse.surrogate as
surrogate`` and keep every result. Each shape is a class (``Sigmoid(alpha=4.0)``) and a
functional (``sigmoid(x, alpha=4.0)``); calling either gives the Heaviside spike with the
shape's surrogate derivative.
"""

from spikefuse.surrogate._base import Surrogate, grad_fn
from spikefuse.surrogate._impl import (
    ERF,
    S2NN,
    Arctan,
    GaussianGrad,
    InvSquareGrad,
    LeakyRelu,
    LogTailedRelu,
    MultiGaussianGrad,
    NonzeroSignLog,
    PiecewiseExp,
    PiecewiseLeakyRelu,
    PiecewiseQuadratic,
    QPseudoSpike,
    ReluGrad,
    Sigmoid,
    SlayerGrad,
    SoftSign,
    SquarewaveFourierSeries,
    arctan,
    erf,
    gaussian_grad,
    inv_square_grad,
    leaky_relu,
    log_tailed_relu,
    multi_gaussian_grad,
    nonzero_sign_log,
    piecewise_exp,
    piecewise_leaky_relu,
    piecewise_quadratic,
    q_pseudo_spike,
    relu_grad,
    s2nn,
    sigmoid,
    slayer_grad,
    soft_sign,
    squarewave_fourier_series,
)
from spikefuse.surrogate._spike import fire, spike
from spikefuse.surrogate.registry import get, names

__all__ = [
    "Surrogate",
    "Sigmoid", "sigmoid",
    "PiecewiseQuadratic", "piecewise_quadratic",
    "PiecewiseExp", "piecewise_exp",
    "SoftSign", "soft_sign",
    "Arctan", "arctan",
    "NonzeroSignLog", "nonzero_sign_log",
    "ERF", "erf",
    "PiecewiseLeakyRelu", "piecewise_leaky_relu",
    "SquarewaveFourierSeries", "squarewave_fourier_series",
    "S2NN", "s2nn",
    "QPseudoSpike", "q_pseudo_spike",
    "LeakyRelu", "leaky_relu",
    "LogTailedRelu", "log_tailed_relu",
    "ReluGrad", "relu_grad",
    "GaussianGrad", "gaussian_grad",
    "InvSquareGrad", "inv_square_grad",
    "MultiGaussianGrad", "multi_gaussian_grad",
    "SlayerGrad", "slayer_grad",
    "get", "names", "grad_fn", "spike", "fire",
]  # fmt: skip

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
