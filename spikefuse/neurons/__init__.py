"""Multi-step spiking neurons over whole sequences, reference and fused backends.

* `multistep` — the engine: any neuron written as one elementwise jnp step
  ``step(state, x_t, params, fire) -> (s_t, new_state)``, run over ``x_seq`` ``[T, *shape]``.
* Built-ins on that engine: ``IF`` / ``LIF`` / ``PLIF`` / ``ALIF`` (pytree classes) and
  ``integrate_fire`` / ``lif`` / ``plif`` / ``alif`` (functionals).

The ``"reference"`` backend is a ``lax.scan`` of the step; the kernel backends (``"pallas"``
and the others of ``kernels.dispatch``) run the fused forward and BPTT scan kernels
(``ScanConfig`` configures the Triton ones, ``MgpuScanConfig`` the Mosaic GPU ones,
``TpuScanConfig`` the TPU ones).
"""

from spikefuse.kernels.mgpu_scan import MgpuScanConfig as MgpuScanConfig
from spikefuse.kernels.scan import ScanConfig as ScanConfig
from spikefuse.kernels.tpu_scan import TpuScanConfig as TpuScanConfig
from spikefuse.neurons.builtin import ALIF as ALIF
from spikefuse.neurons.builtin import IF as IF
from spikefuse.neurons.builtin import LIF as LIF
from spikefuse.neurons.builtin import PLIF as PLIF
from spikefuse.neurons.builtin import alif as alif
from spikefuse.neurons.builtin import integrate_fire as integrate_fire
from spikefuse.neurons.builtin import lif as lif
from spikefuse.neurons.builtin import plif as plif
from spikefuse.neurons.engine import multistep as multistep

__all__ = ["ALIF", "IF", "LIF", "MgpuScanConfig", "PLIF", "ScanConfig", "TpuScanConfig", "alif",
           "integrate_fire", "lif", "multistep", "plif"]
