"""jax-version shims for the kernels (jax 0.10.2, 0.11.x, 0.12.x) — nothing else lives here."""

import contextlib
import importlib
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import jax

# jax >= 0.11 warns (deprecation id "jax-pallas-triton") each time a `pallas_call` is lowered
# through Triton; jax 0.10.2 does not. The text is matched from its start, so only this one
# warning is silenced.
TRITON_DEPRECATION_MESSAGE = r"The Pallas Triton backend is deprecated"


@contextlib.contextmanager
def silence_triton_deprecation() -> Iterator[None]:
    """Ignores jax's Pallas-Triton `DeprecationWarning`, and only it, inside the block.

    The warning is raised when a `pallas_call` is *lowered*, not when it is traced, so wrap
    the code that lowers: the primitive's lowering rule, `jax.jit(...).lower`, `jax.export`.
    Being a `contextlib.contextmanager`, it also decorates a function, e.g. a lowering rule:
    `mlir.register_lowering(p, silence_triton_deprecation()(mlir.lower_fun(f, ...)))`.
    Like `warnings.catch_warnings`, it is not thread-safe.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=TRITON_DEPRECATION_MESSAGE, category=DeprecationWarning)
        yield


# -- Pallas Triton: deprecated since jax 0.11, to be removed ----------------------------------
_TRITON = "jax.experimental.pallas.triton"


def pallas_triton() -> ModuleType | None:
    """jax's Pallas Triton module (``plt``), or None where the installed jax has none.

    Imported on every call (a ``sys.modules`` lookup once loaded), never at spikefuse's
    import, so that spikefuse imports on a jax without the Triton lowering, and so that a
    test can hide it (``sys.modules["jax.experimental.pallas.triton"] = None``).
    """
    try:
        return importlib.import_module(_TRITON)
    except ImportError:
        return None


def require_pallas_triton(instead: str) -> ModuleType:
    """`pallas_triton`, or an ``ImportError`` naming the jax version and ``instead`` (the
    Mosaic GPU module to use) where the installed jax has no Triton lowering."""
    plt = pallas_triton()
    if plt is None:
        raise ImportError(f"the Triton kernels need jax's Pallas Triton lowering, which jax "
                          f"{jax_version()} does not have; use the Mosaic GPU kernels "
                          f"({instead})")
    return plt


def has_triton() -> bool:
    """Whether the installed jax can lower Pallas kernels through Triton."""
    return pallas_triton() is not None


def triton_lowering_rules() -> Any:
    """The table of primitives the Pallas Triton lowering has a rule for."""
    from jax._src.pallas.triton import lowering

    return lowering.triton_lowering_rules


# -- Pallas Mosaic GPU ---------------------------------------------------------------------
def interpret_gpu_params(**kwargs: Any) -> Any:
    """``plgpu.InterpretGPUParams(**kwargs)``: Mosaic GPU interpret mode (CPU simulation of
    a GPU's memories and threads). jax 0.10.2 has it only under ``jax._src`` (not
    re-exported); 0.11 and 0.12 re-export it from ``jax.experimental.pallas.mosaic_gpu``."""
    return _interpret_gpu_params_type()(**kwargs)


def _interpret_gpu_params_type() -> type:
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams


def is_interpret_gpu_params(value: object) -> bool:
    """Whether ``value`` is a ``plgpu.InterpretGPUParams``."""
    return isinstance(value, _interpret_gpu_params_type())


def reset_gpu_interpret_mode_state() -> None:
    """Clears Mosaic GPU interpret mode's global state; needed after a kernel raised there
    (same place in jax 0.10.2 - 0.12)."""
    from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call

    interpret_pallas_call.reset_gpu_interpret_mode_state()


def mosaic_gpu_arch() -> tuple[int, int]:
    """The GPU architecture Mosaic GPU compiles for now, ``(major, minor)``: the abstract
    mesh's device when it has a ``compute_capability``, else the default device's, else
    (9, 0) (jax's choice when no GPU is visible, e.g. ``jax.export`` on a CPU machine).
    jax 0.11+ keeps ``_infer_arch`` in ``mosaic.gpu.utils``, 0.10.2 in ``mosaic.gpu.core``."""
    from jax.experimental.mosaic.gpu import core, utils

    infer = getattr(utils, "_infer_arch", None) or core._infer_arch
    major, minor = infer()
    return int(major), int(minor)


def mosaic_gpu_lowering_rules() -> Any:
    """The table of primitives the Pallas Mosaic GPU lowering has a rule for, under the
    Warpgroup lowering semantics the kernels ask for, with warpgroup-level primitives."""
    from jax._src.pallas.mosaic_gpu import core as gpu_core
    from jax._src.pallas.mosaic_gpu import lowering
    from jax.experimental.mosaic import gpu as mgpu

    key = (mgpu.LoweringSemantics.Warpgroup, gpu_core.PrimitiveSemantics.Warpgroup)
    return lowering.mosaic_lowering_rules[key]


def jax_version() -> str:
    """The installed jax version, for error messages."""
    return str(jax.__version__)
