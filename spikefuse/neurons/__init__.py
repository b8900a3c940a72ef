"""Multi-step spiking neurons: IF and LIF over whole sequences, reference and fused backends.

``IF`` / ``LIF`` (pytree classes) and ``integrate_fire`` / ``lif`` (functionals) run a neuron
over ``x_seq`` ``[T, *shape]`` and return ``(spikes, v_final)``. The ``"reference"`` backend
is a ``lax.scan`` of the step; ``"pallas"`` / ``"interpret"`` run the fused scan kernels.
"""

from spikefuse.kernels.scan import ScanConfig as ScanConfig
from spikefuse.neurons.multistep import IF as IF
from spikefuse.neurons.multistep import LIF as LIF
from spikefuse.neurons.multistep import integrate_fire as integrate_fire
from spikefuse.neurons.multistep import lif as lif

__all__ = ["IF", "LIF", "ScanConfig", "integrate_fire", "lif"]
