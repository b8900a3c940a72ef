"""spikefuse — surrogate-gradient spike functions for spiking neural networks in JAX.

* ``spikefuse.surrogate``: braintools-compatible surrogate shapes (drop-in replacement).
* ``spikefuse.neurons``: multi-step IF/LIF layers, a ``lax.scan`` reference and fused kernels.
* ``spikefuse.memory``: training memory — spikes kept as bits (``spike_matmul``,
  ``spike_conv``), blocks recomputed (``checkpoint``), and ``residual_bytes``.
* ``spikefuse.fire(v, threshold, surrogate)``: the fused threshold + spike entry point.
* ``spikefuse.set_backend`` / ``get_backend`` / ``use_backend``: ``"auto"``, ``"reference"``,
  ``"pallas"``, ``"pallas_triton"``, ``"pallas_mgpu"``, ``"interpret"``, ``"interpret_mgpu"``
  or ``"interpret_tpu"`` (also the ``SPIKEFUSE_BACKEND`` environment variable).
"""

from spikefuse import memory, neurons, surrogate
from spikefuse.kernels import dispatch as _dispatch
from spikefuse.kernels.dispatch import (
    BackendUnavailableError,
    get_backend,
    set_backend,
    use_backend,
)
from spikefuse.surrogate._spike import fire

#: The version of this package; the single source of truth (``pyproject.toml`` reads it).
__version__ = "0.1.0"

#: The backend names every ``backend=`` argument, ``set_backend``, ``use_backend`` and the
#: ``SPIKEFUSE_BACKEND`` environment variable accept.
BACKENDS: tuple[str, ...] = _dispatch.BACKENDS

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "__version__",
    "fire",
    "get_backend",
    "memory",
    "neurons",
    "set_backend",
    "surrogate",
    "use_backend",
]
