"""Lower a function for the ``cuda`` platform with ``jax.export`` on a CPU-only machine.

Shared by every kernel test. jax >= 0.12 asks the Pallas Triton lowering for the target
GPU's compute capability; with no GPU present it must come from an abstract device, so we
lower inside ``use_abstract_mesh`` with an H200 (our GPU target). jax 0.10.2 needs nothing.
"""

import contextlib
import warnings

import jax
from jax import export

_TRITON_CALL = "__gpu$xla.gpu.triton"


def _abstract_gpu():
    if not hasattr(jax.sharding, "AbstractDevice"):
        return contextlib.nullcontext()
    from jax.sharding import AxisType

    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
    mesh = jax.sharding.AbstractMesh((1,), ("_gpu",), (AxisType.Explicit,), abstract_device=device)
    return jax.sharding.use_abstract_mesh(mesh)


def export_for_cuda(fn, *avals):
    """Returns the StableHLO text of ``jax.jit(fn)`` lowered for ``cuda`` at ``avals``."""
    with _abstract_gpu(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*[Tt]riton.*")
        exported = export.export(
            jax.jit(fn),
            platforms=["cuda"],
            disabled_checks=[export.DisabledSafetyCheck.custom_call(_TRITON_CALL)],
        )(*avals)
    return exported.mlir_module()
