"""Backend resolution — the only place that decides which implementation runs.

Backends:

* ``"reference"`` — pure jnp, compiled by XLA; the specification every kernel is tested against.
* ``"pallas"`` — the Pallas kernels of the platform the computation is compiled for: on a GPU
  one of two kernel families, chosen per operation by `gpu_family` (below): the Triton
  kernels (``kernels/elementwise.py``, ``kernels/scan.py``) or the Mosaic GPU kernels
  (``kernels/mgpu_elementwise.py``, ``kernels/mgpu_scan.py``); on a TPU the Mosaic TPU
  kernels (``kernels/tpu_elementwise.py``, ``kernels/tpu_scan.py``). The choice is made by
  platform-specific lowering rules of the spike and neuron primitives, so
  ``jax.export(..., platforms=["cuda"])`` gives the GPU kernels and ``platforms=["tpu"]``
  the TPU ones, from any machine. Compiling it for CPU raises a clear error instead of
  falling back.
* ``"pallas_triton"`` / ``"pallas_mgpu"`` — the user's explicit choice of GPU family: the
  Triton or the Mosaic GPU kernels, compiled (GPU only; strict: an error where that family
  cannot run, e.g. ``"pallas_triton"`` on a jax without the Pallas Triton lowering).
* ``"interpret"`` — the Triton kernels in Pallas interpret mode: runs anywhere, slowly;
  tests use it to check the Triton kernels on CPU.
* ``"interpret_mgpu"`` — the Mosaic GPU kernels' bodies run by Pallas' interpreter (the grid
  in order, each program seeing the whole arrays): runs anywhere, slowly, through every jax
  transformation; tests use it to check the Mosaic GPU kernels on CPU (and call the kernels
  directly in Mosaic GPU interpret mode, ``plgpu.InterpretGPUParams``, besides).
* ``"interpret_tpu"`` — the TPU kernels in Pallas TPU interpret mode
  (``pltpu.InterpretParams``: the grid in order, VMEM scratch, TPU semantics): runs
  anywhere, slowly; tests use it to check the TPU kernels on CPU.
* ``"auto"`` — decided per platform *and per operation* by the table ``AUTO`` below.

Precedence: a call's ``backend=`` argument, then ``use_backend(...)``, then
``set_backend(...)``, then the ``SPIKEFUSE_BACKEND`` environment variable (read when a call
resolves, never at import), then ``"auto"``. Every name except ``"auto"`` is strict: it runs
that implementation or raises, on every platform and for every operation.

Which GPU family ``"pallas"`` compiles, and why
-----------------------------------------------
jax >= 0.11 deprecates the Pallas Triton lowering ("migrate to the Mosaic GPU backend"); a
later jax will not have it. `gpu_family` decides per operation, while lowering for a GPU:

* the Triton kernels while the installed jax has the Triton lowering and no GPU measurement
  shows the Mosaic GPU kernels at least as fast (the table ``GPU_FAMILY``: every row is
  ``"triton"`` today, because the Mosaic GPU kernels have not run on a GPU; the Triton ones
  are the kernels measured on the H200, bench/RESULTS.md);
* the Mosaic GPU kernels when jax has no Triton lowering.

So nothing changes for users of jax 0.10-0.12, and a jax without Triton keeps ``"pallas"``
working. ``"pallas_triton"`` / ``"pallas_mgpu"`` override the choice.

What ``"auto"`` picks, and the measurement behind each choice
--------------------------------------------------------------
Operations: ``"elementwise"`` (``spike`` / ``fire`` / a surrogate called on an array) and
``"neurons"`` (the multi-step neurons, ``spikefuse.neurons``). A default must never make a
model slower than plain JAX, so a kernel is the default only where a measurement shows it
faster than the reference:

* GPU, elementwise -> ``"reference"``. In isolation the Pallas kernel ties with XLA's own
  fusion of the reference (H200, 2^28 elements, forward then backward: 1.278 vs 1.274 ms in
  f32; bench/RESULTS.md, 2026-11-29, run 2), and when XLA can fuse the backward with the
  forward the reference is 1.2x faster. Inside a user's step a ``pallas_call`` is opaque:
  XLA cannot fuse the charge before it or the reset after it, so it can only add passes
  over memory. No GPU measurement in a model shows the kernel ahead (the model benchmark,
  ``python -m spikefuse bench --models``, times both as ``step-pallas`` and
  ``step-reference``); until one does, the reference runs. ``"pallas"`` stays available.
* GPU, neurons -> ``"pallas"``: the fused forward and BPTT kernels, 2.75-9.38x faster than
  the best ``lax.scan`` of unroll 1/8/32 for LIF forward+backward (H200, bench/RESULTS.md,
  2026-11-30, run 4). Measured per layer, not yet in a model on a GPU. That measurement is
  of the Triton kernels: on a jax without the Triton lowering, where ``"pallas"`` would
  compile the Mosaic GPU kernels (never run on a GPU), ``"auto"`` picks ``"reference"``
  instead, until a GPU measurement adds ``"mgpu"`` to the table ``AUTO_GPU_FAMILIES``.
* TPU mirrors the GPU rows: elementwise -> ``"reference"`` (a ``pallas_call`` is as opaque
  to XLA on a TPU, which fuses the reference's elementwise code itself), neurons ->
  ``"pallas"`` (the fused Mosaic kernels move the same bytes per neuron-step as the GPU
  ones, about 21 B f32 forward+backward, against a ``lax.scan`` that pays a per-step loop
  cost and keeps every step's state). Caveat: **not measured on a TPU** — nothing has run
  on one; the kernels are checked in interpret mode (Pallas' and its TPU interpret mode)
  and lowered for ``tpu`` with ``jax.export`` on CPU. Run ``python -m spikefuse bench`` on
  a TPU, and revise this row with the figures, before relying on it.
* CPU -> ``"reference"`` for both: the kernels cannot compile there (interpret mode is a
  test tool, orders of magnitude slower).

A platform not in the table (and any operation on it) gets ``"reference"``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import jax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from spikefuse.kernels import _compat

__all__ = [
    "AUTO",
    "AUTO_GPU_FAMILIES",
    "BACKENDS",
    "COMPILED",
    "ENV_VAR",
    "FAMILIES",
    "GPU_FAMILY",
    "LOWERING_PLATFORMS",
    "OPS",
    "BackendUnavailableError",
    "accelerator_only",
    "family_name",
    "get_backend",
    "gpu_family",
    "kernel_target",
    "resolve",
    "set_backend",
    "use_backend",
]

BACKENDS = ("auto", "reference", "pallas", "pallas_triton", "pallas_mgpu", "interpret",
            "interpret_mgpu", "interpret_tpu")
# The backends that compile kernels (for a GPU or a TPU; never for a CPU).
COMPILED = ("pallas", "pallas_triton", "pallas_mgpu")
ENV_VAR = "SPIKEFUSE_BACKEND"
OPS = ("elementwise", "neurons")

# What "auto" resolves to, by (platform, operation). The evidence for each row is in the
# module docstring; a new platform or kernel adds its rows here and nowhere else.
AUTO = {
    ("cpu", "elementwise"): "reference",
    ("cpu", "neurons"): "reference",
    ("gpu", "elementwise"): "reference",  # no model measurement shows the kernel faster
    ("gpu", "neurons"): "pallas",
    ("tpu", "elementwise"): "reference",  # as on GPU; not measured on a TPU
    ("tpu", "neurons"): "pallas",  # as on GPU; not measured on a TPU
}
# The GPU kernel families a measurement backs AUTO's "pallas" rows with, per operation
# (bench/RESULTS.md). Where "pallas" would compile another family (`gpu_family`: a jax
# without the Triton lowering gets the Mosaic GPU kernels), "auto" picks "reference".
AUTO_GPU_FAMILIES = {
    "elementwise": ("triton",),
    "neurons": ("triton",),  # Mosaic GPU not yet run on a GPU
}
# jax.default_backend() names -> the table's platform names.
_PLATFORM_ALIASES = {"cuda": "gpu"}

_UNSET = None
_global: str | None = _UNSET
_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar("spikefuse_backend",
                                                                     default=None)


def _check(name, what: str = "backend") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a string, one of {BACKENDS}; got {type(name).__name__}")
    key = name.strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}; got {name!r}")
    return key


def set_backend(name: str) -> None:
    """Sets the process-wide default backend (``"auto"`` restores the default)."""
    global _global
    _global = _check(name)


def get_backend() -> str:
    """The configured backend name (possibly ``"auto"``), before platform resolution."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if _global is not None:
        return _global
    env = os.environ.get(ENV_VAR, "").strip()
    return _check(env, f"environment variable {ENV_VAR}") if env else "auto"


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run the enclosed calls with backend ``name``."""
    token = _scoped.set(_check(name))
    try:
        yield
    finally:
        _scoped.reset(token)


def resolve(backend: str | None = None, *, op: str = "elementwise",
            platform: str | None = None) -> str:
    """The concrete backend (any name of ``BACKENDS`` but ``"auto"``) for a call.

    Args:
      backend: the call's ``backend=`` argument; ``None`` takes the configured default
        (``use_backend``, ``set_backend``, then ``SPIKEFUSE_BACKEND``, then ``"auto"``).
      op: the operation asking, one of ``OPS``: ``"elementwise"`` or ``"neurons"``.
      platform: the platform ``"auto"`` decides for; default ``jax.default_backend()`` at
        call time (``"cpu"``, ``"gpu"``, ``"tpu"``; ``"cuda"`` counts as ``"gpu"``).

    Returns:
      An explicit name unchanged; ``"auto"`` looked up in ``AUTO`` (``"reference"`` for a
      platform the table does not list, and on a GPU where ``"pallas"`` would compile a
      kernel family no measurement backs: ``AUTO_GPU_FAMILIES``).

    Example:
      >>> from spikefuse.kernels import dispatch
      >>> dispatch.resolve("auto", op="neurons", platform="gpu")
      'pallas'
      >>> dispatch.resolve("auto", op="elementwise", platform="gpu")
      'reference'
      >>> dispatch.resolve("auto", op="neurons", platform="tpu")
      'pallas'
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}; got {op!r}")
    name = get_backend() if backend is None else _check(backend)
    if name != "auto":
        return name
    platform = jax.default_backend() if platform is None else platform
    platform = _PLATFORM_ALIASES.get(platform, platform)
    choice = AUTO.get((platform, op), "reference")
    if choice == "pallas" and platform == "gpu" and (
            gpu_family(op) not in AUTO_GPU_FAMILIES[op]):
        return "reference"
    return choice


class BackendUnavailableError(RuntimeError):
    """An explicitly chosen backend cannot run on this platform (no silent fallback)."""


# The lowering platforms the kernel primitives (spike, neurons) register a rule of their own
# for, each calling `kernel_target` with its name (None: the default rule, any other
# platform, lowered as "cpu").
LOWERING_PLATFORMS = (None, "cuda", "rocm", "tpu")

# The kernel families: Pallas-Triton (GPU), Pallas Mosaic GPU (GPU), Pallas Mosaic (TPU).
FAMILIES = ("triton", "mgpu", "tpu")
_FAMILY_NAMES = {"triton": "Triton", "mgpu": "Mosaic GPU", "tpu": "Mosaic TPU"}

# The GPU family "pallas" compiles per operation while jax has both (see the module
# docstring). A row turns to "mgpu" when a GPU measurement (bench/gpu_run.sh, recorded in
# bench/RESULTS.md) shows the Mosaic GPU kernels at least as fast as the Triton ones for it
# (and then "mgpu" joins AUTO_GPU_FAMILIES[op] too).
GPU_FAMILY = {
    "elementwise": "triton",  # Mosaic GPU not yet run on a GPU
    "neurons": "triton",  # Mosaic GPU not yet run on a GPU
}


def gpu_family(op: str) -> str:
    """The GPU kernel family ``"pallas"`` compiles for ``op``: ``"triton"`` or ``"mgpu"``.

    ``GPU_FAMILY[op]`` while the installed jax has the Pallas Triton lowering, else
    ``"mgpu"`` (decided when a computation is lowered for a GPU; the Triton lowering is
    looked up then, not at import).

    Example:
      >>> from spikefuse.kernels import dispatch
      >>> dispatch.gpu_family("neurons")  # jax 0.10-0.12 have Triton; nothing measured yet
      'triton'
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}; got {op!r}")
    return GPU_FAMILY[op] if _compat.has_triton() else "mgpu"


def kernel_target(backend: str, platform: str, op: str = "elementwise") -> tuple[str, bool]:
    """Which kernels a kernel backend runs when lowered for ``platform``.

    Args:
      backend: a kernel backend: ``"pallas"``, ``"pallas_triton"``, ``"pallas_mgpu"``,
        ``"interpret"``, ``"interpret_mgpu"`` or ``"interpret_tpu"``.
      platform: the lowering platform (``"cuda"``, ``"rocm"``, ``"tpu"``, ``"cpu"``, ...).
      op: the operation (``"elementwise"`` or ``"neurons"``): on a GPU, ``"pallas"`` takes
        its family from `gpu_family`.

    Returns:
      ``(family, interpret)``: ``family`` is ``"triton"`` (the kernels of
      ``kernels/elementwise.py`` and ``kernels/scan.py``), ``"mgpu"`` (Mosaic GPU:
      ``kernels/mgpu_elementwise.py``, ``kernels/mgpu_scan.py``) or ``"tpu"`` (Mosaic TPU:
      ``kernels/tpu_elementwise.py``, ``kernels/tpu_scan.py``); ``interpret`` says whether
      they run interpreted (on any platform) instead of compiled.

    Raises:
      BackendUnavailableError: a compiled backend lowered for a platform it cannot compile
        for, or a Triton backend on a jax without the Pallas Triton lowering (the message
        names the family and the jax version).

    Example:
      >>> from spikefuse.kernels import dispatch
      >>> dispatch.kernel_target("pallas", "tpu"), dispatch.kernel_target("pallas_mgpu", "cuda")
      (('tpu', False), ('mgpu', False))
      >>> dispatch.kernel_target("interpret_mgpu", "cpu")
      ('mgpu', True)
    """
    interpreted = {"interpret": "triton", "interpret_mgpu": "mgpu", "interpret_tpu": "tpu"}
    if backend in interpreted:
        family, interpret = interpreted[backend], True
    elif backend not in COMPILED:
        raise ValueError(f"backend must be one of {COMPILED + tuple(interpreted)}, got "
                         f"{backend!r}")
    elif platform in ("cuda", "rocm", "gpu"):
        family, interpret = {"pallas": None, "pallas_triton": "triton",
                             "pallas_mgpu": "mgpu"}[backend] or gpu_family(op), False
    elif platform == "tpu" and backend == "pallas":
        family, interpret = "tpu", False
    else:
        _refuse(platform, backend)
        raise AssertionError("unreachable")
    if family == "triton" and not _compat.has_triton():
        raise BackendUnavailableError(
            f"spikefuse backend {backend!r} runs the Triton kernel family, but jax "
            f"{_compat.jax_version()} has no Pallas Triton lowering (deprecated since jax "
            "0.11). Use 'pallas' (which compiles the Mosaic GPU kernels there), "
            "'pallas_mgpu', or 'interpret_mgpu' to interpret them.")
    return family, interpret


def family_name(family: str) -> str:
    """A kernel family's name for messages: ``"Triton"``, ``"Mosaic GPU"``, ``"Mosaic TPU"``."""
    return _FAMILY_NAMES[family]


def _refuse(platform, backend="pallas"):
    what = {"pallas": "Pallas kernels for GPU (Triton or Mosaic GPU) or TPU (Mosaic TPU)",
            "pallas_triton": "the Triton kernels for a GPU",
            "pallas_mgpu": "the Mosaic GPU kernels for a GPU"}[backend]
    raise BackendUnavailableError(
        f"spikefuse backend {backend!r} compiles {what} and cannot compile for {platform} "
        f"(jax {_compat.jax_version()}). Use backend='interpret', 'interpret_mgpu' or "
        "'interpret_tpu' (the Triton, Mosaic GPU or TPU kernels, interpreted) or "
        "'reference', or 'auto' to pick per platform."
    )


# An identity that refuses to compile for CPU. Every "pallas" path passes its main input
# through it, so compiling such a path for a platform without Pallas kernels raises a clear
# error before any kernel is lowered, while lowering for cuda or tpu (jax.export on a
# CPU-only machine included) goes through untouched; there the primitives' own
# platform-specific lowering rules pick the Triton or the Mosaic kernels.
_guard_p = Primitive("spikefuse_accelerator_only")
_guard_p.def_abstract_eval(lambda x, *, backend: x)


@functools.cache
def _guard_jit(backend):
    return jax.jit(functools.partial(_guard_p.bind, backend=backend))


_guard_p.def_impl(lambda x, *, backend: _guard_jit(backend)(x))  # eager calls compile too
ad.primitive_jvps[_guard_p] = lambda primals, tangents, *, backend: (
    _guard_p.bind(*primals, backend=backend), tangents[0])
batching.primitive_batchers[_guard_p] = lambda args, dims, *, backend: (
    _guard_p.bind(*args, backend=backend), dims[0])
mlir.register_lowering(_guard_p, mlir.lower_fun(lambda x, *, backend: x,
                                                multiple_results=False))
mlir.register_lowering(_guard_p, lambda ctx, x, *, backend: _refuse("cpu", backend),
                       platform="cpu")


def accelerator_only(x, backend: str = "pallas"):
    """``x`` unchanged, but compiling the computation for CPU raises
    ``BackendUnavailableError`` naming ``backend`` (one of ``COMPILED``); lowering for cuda
    or tpu is unaffected."""
    if backend not in COMPILED:
        raise ValueError(f"backend must be one of {COMPILED}, got {backend!r}")
    return _guard_p.bind(x, backend=backend)
