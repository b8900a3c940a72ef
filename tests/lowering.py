"""Lower a function for the ``cuda`` or ``tpu`` platform with ``jax.export`` on a CPU-only
machine.

Shared by every kernel test. For ``tpu`` nothing is needed: the Pallas -> Mosaic lowering runs
on any machine and leaves a ``tpu_custom_call`` (the final Mosaic compile happens on a TPU). jax >= 0.12 asks the Pallas Triton lowering for the target
GPU's compute capability; with no GPU present it must come from an abstract device, so we
lower inside ``use_abstract_mesh`` with an H200 (our GPU target); jax 0.10.2 does not need it
but accepts it, so every supported version lowers the same way. `cuda_mesh` gives the same
for a multi-device mesh (a function with a ``shard_map``).
"""

import warnings

import jax
from jax import export
from jax.sharding import AxisType

TRITON_CALL = "__gpu$xla.gpu.triton"
TPU_CALL = "tpu_custom_call"
# What each platform's kernels leave in the exported module.
KERNEL_CALL = {"cuda": TRITON_CALL, "tpu": TPU_CALL}
_H200 = dict(device_kind="NVIDIA H200", num_cores=132, platform="gpu")


def _abstract_gpu():
    return cuda_mesh((1,), ("_gpu",), AxisType.Explicit)[1]


def cuda_mesh(shape, names, axis_type=AxisType.Auto):
    """``(mesh, context)``: an abstract mesh of H200s to lower for ``cuda`` with (a function
    with a ``shard_map`` names it), and the context that makes it the lowering's mesh."""
    device = jax.sharding.AbstractDevice(**_H200)
    mesh = jax.sharding.AbstractMesh(tuple(shape), tuple(names), (axis_type,) * len(shape),
                                     abstract_device=device)
    return mesh, jax.sharding.use_abstract_mesh(mesh)


def export_for_cuda(fn, *avals, context=None):
    """Returns the StableHLO text of ``jax.jit(fn)`` lowered for ``cuda`` at ``avals``.

    ``context``: the one `cuda_mesh` returned, for a function over a multi-device mesh.
    """
    with context or _abstract_gpu(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*[Tt]riton.*")
        exported = export.export(
            jax.jit(fn),
            platforms=["cuda"],
            disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON_CALL)],
        )(*avals)
    return exported.mlir_module()


def export_for_tpu(fn, *avals):
    """Returns the StableHLO text of ``jax.jit(fn)`` lowered for ``tpu`` at ``avals``."""
    return export.export(jax.jit(fn), platforms=["tpu"])(*avals).mlir_module()


def export_for(platform, fn, *avals):
    """`export_for_cuda` or `export_for_tpu`, by platform name."""
    return (export_for_cuda if platform == "cuda" else export_for_tpu)(fn, *avals)
