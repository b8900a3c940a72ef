"""Lower a function for the ``cuda`` or ``tpu`` platform with ``jax.export`` on a CPU-only
machine.

Shared by every kernel test. For ``tpu`` nothing is needed: the Pallas -> Mosaic lowering runs
on any machine and leaves a ``tpu_custom_call`` (the final Mosaic compile happens on a TPU).
jax >= 0.12 asks the Pallas Triton lowering for the target GPU's compute capability; with no
GPU present it must come from an abstract device, so we lower inside ``use_abstract_mesh``
with an H200 (our GPU target); jax 0.10.2 does not need it but accepts it, so every
supported version lowers the same way. `cuda_mesh` gives the same for a multi-device mesh
(a function with a ``shard_map``).

The Mosaic GPU kernels leave a ``mosaic_gpu_v2`` custom call whose MLIR is tagged with the
architecture it was compiled for. Mosaic GPU reads that from the abstract mesh's device when
the device has a ``compute_capability`` (``_infer_arch`` in jax's ``mosaic/gpu``; sm_90 when
none is found), which jax's ``AbstractDevice`` lacks: `export_for_cuda(..., arch="8.0")`
lowers with a subclass that has one (`_GpuDevice`), no patching of jax needed.
`mosaic_gpu_archs` reads the tags back out of the exported text.
"""

import dataclasses
import re
import sys
import warnings

import jax
import pytest
from jax import export
from jax.sharding import AxisType

# The Mosaic GPU family's full test matrix (interpret-mode parity of every kernel through the
# library, every dtype and architecture) runs on the Python 3.12 row (jax 0.12); the 3.11 row
# (jax 0.10.2) runs one case of each kernel and the cuda lowerings, within its test-time
# budget. `mgpu_full` marks (or `pytest.param(..., marks=mgpu_full)`) the rest.
MGPU_FULL = sys.version_info >= (3, 12)
mgpu_full = pytest.mark.skipif(
    not MGPU_FULL, reason="the Mosaic GPU family's full matrix runs on the Python 3.12 row "
                          "(jax 0.12); this row runs one case per kernel (test-time budget)")

TRITON_CALL = "__gpu$xla.gpu.triton"
MGPU_CALL = "mosaic_gpu_v2"
TPU_CALL = "tpu_custom_call"
# What each platform's kernels leave in the exported module ("pallas" on a GPU: Triton while
# jax has it).
KERNEL_CALL = {"cuda": TRITON_CALL, "tpu": TPU_CALL}
# An abstract GPU of each architecture the Mosaic GPU kernels are exported for.
GPUS = {"8.0": ("NVIDIA A100-SXM4-80GB", 108), "9.0": ("NVIDIA H200", 132),
        "10.0": ("NVIDIA B200", 148)}


@dataclasses.dataclass(frozen=True, slots=True)
class _GpuDevice(jax.sharding.AbstractDevice):
    """An abstract GPU with the compute capability Mosaic GPU compiles for."""

    compute_capability: str = "9.0"


def _abstract_gpu(arch=None):
    return cuda_mesh((1,), ("_gpu",), AxisType.Explicit, arch=arch)[1]


def cuda_mesh(shape, names, axis_type=AxisType.Auto, arch=None):
    """``(mesh, context)``: an abstract mesh of H200s (or of the GPUs of ``arch``, "8.0",
    "9.0" or "10.0") to lower for ``cuda`` with (a function with a ``shard_map`` names it),
    and the context that makes it the lowering's mesh."""
    kind, cores = GPUS[arch or "9.0"]
    if arch is None:
        device = jax.sharding.AbstractDevice(device_kind=kind, num_cores=cores, platform="gpu")
    else:
        device = _GpuDevice(device_kind=kind, num_cores=cores, platform="gpu",
                            compute_capability=arch)
    mesh = jax.sharding.AbstractMesh(tuple(shape), tuple(names), (axis_type,) * len(shape),
                                     abstract_device=device)
    return mesh, jax.sharding.use_abstract_mesh(mesh)


def mosaic_gpu_archs(text):
    """The ``(major, minor)`` architecture of every Mosaic GPU kernel in an exported module's
    text, read from each kernel's MLIR bytecode."""
    from jax._src.interpreters import mlir
    from jax._src.lib.mlir import ir

    archs = []
    for blob in re.findall(r'module = "((?:[^"\\]|\\.)*)"', text):
        with mlir.make_ir_context() as ctx, ir.Location.unknown():
            ctx.allow_unregistered_dialects = True
            module = str(ir.Module.parse(_unescape(blob)))
        archs.append(tuple(int(re.search(rf"mosaic_gpu.arch_{k} = (\d+)", module).group(1))
                           for k in ("major", "minor")))
    return archs


def _unescape(s):
    """The bytes of an MLIR string attribute as printed (``\\XX`` hex escapes)."""
    out, i = bytearray(), 0
    while i < len(s):
        if s[i] != "\\":
            out += s[i].encode()
            i += 1
        elif s[i + 1] in '\\"':
            out.append(ord(s[i + 1]))
            i += 2
        elif s[i + 1] in "nt":
            out.append({"n": 10, "t": 9}[s[i + 1]])
            i += 2
        else:
            out.append(int(s[i + 1:i + 3], 16))
            i += 3
    return bytes(out)


def export_for_cuda(fn, *avals, context=None, arch=None):
    """Returns the StableHLO text of ``jax.jit(fn)`` lowered for ``cuda`` at ``avals``.

    ``context``: the one `cuda_mesh` returned, for a function over a multi-device mesh.
    ``arch``: the GPU architecture ("8.0", "9.0", "10.0") Mosaic GPU kernels compile for
    (default: an H200 without a compute capability, which Mosaic GPU takes as sm_90).
    """
    with context or _abstract_gpu(arch), warnings.catch_warnings():
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
