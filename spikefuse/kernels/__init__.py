"""Pallas kernels. They receive formulas as functions; nothing here imports surrogate/neurons."""

from spikefuse.kernels.elementwise import ElementwiseConfig as ElementwiseConfig
from spikefuse.kernels.elementwise import default_config as default_config
from spikefuse.kernels.elementwise import grad_mul as grad_mul
from spikefuse.kernels.elementwise import heaviside as heaviside

__all__ = ["ElementwiseConfig", "default_config", "grad_mul", "heaviside"]
