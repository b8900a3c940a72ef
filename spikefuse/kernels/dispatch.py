"""Backend resolution — the only place that decides which implementation runs.

Backends:

* ``"reference"`` — pure jnp, compiled by XLA; the specification every kernel is tested against.
* ``"pallas"`` — Pallas Triton kernels (GPU). Forced on a machine without a GPU it still
  emits the GPU ``pallas_call`` (so ``jax.export(..., platforms=["cuda"])`` works), and
  compiling for CPU raises a clear error instead of falling back.
* ``"interpret"`` — the same kernels in Pallas interpret mode: runs anywhere, slowly; tests
  use it to check the kernels on CPU.
* ``"auto"`` — ``"pallas"`` on GPU, ``"reference"`` elsewhere (TPU kernels are not written
  yet, so TPU gets the reference).

Precedence: a call's ``backend=`` argument, then ``use_backend(...)``, then
``set_backend(...)``, then the ``SPIKEFUSE_BACKEND`` environment variable (read when a call
resolves, never at import), then ``"auto"``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import jax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "BackendUnavailableError",
    "get_backend",
    "gpu_only",
    "resolve",
    "set_backend",
    "use_backend",
]

BACKENDS = ("auto", "reference", "pallas", "interpret")
ENV_VAR = "SPIKEFUSE_BACKEND"

_UNSET = None
_global: str | None = _UNSET
_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar("spikefuse_backend", default=None)


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


def resolve(backend: str | None = None) -> str:
    """Returns the concrete backend (``"reference"``, ``"pallas"`` or ``"interpret"``) for a call."""
    name = get_backend() if backend is None else _check(backend)
    if name == "auto":
        return "pallas" if jax.default_backend() in ("gpu", "cuda") else "reference"
    return name


class BackendUnavailableError(RuntimeError):
    """An explicitly chosen backend cannot run on this platform (no silent fallback)."""


# An identity that refuses to compile for CPU or TPU. Every "pallas" path passes its main
# input through it, so compiling such a path for a platform without Triton raises a clear
# error before any kernel launches, while lowering for cuda (jax.export on a CPU-only
# machine included) goes through untouched.
_gpu_only_p = Primitive("spikefuse_gpu_only")
_gpu_only_p.def_abstract_eval(lambda x: x)
_gpu_only_p.def_impl(lambda x: _gpu_only_jit(x))  # eager calls compile too, so they check
_gpu_only_jit = jax.jit(_gpu_only_p.bind)
ad.primitive_jvps[_gpu_only_p] = lambda primals, tangents: (_gpu_only_p.bind(*primals), tangents[0])
batching.primitive_batchers[_gpu_only_p] = lambda args, dims: (_gpu_only_p.bind(*args), dims[0])
mlir.register_lowering(_gpu_only_p, mlir.lower_fun(lambda x: x, multiple_results=False))


def _refuse(platform, ctx, x):
    raise BackendUnavailableError(
        f"spikefuse backend 'pallas' runs Triton GPU kernels and cannot compile for {platform}. "
        "Use backend='interpret' (the same kernels, interpreted) or 'reference', or 'auto' to "
        "pick per platform."
    )


for _platform in ("cpu", "tpu"):
    mlir.register_lowering(_gpu_only_p, functools.partial(_refuse, _platform), platform=_platform)


def gpu_only(x):
    """``x`` unchanged, but compiling the computation for CPU or TPU raises
    ``BackendUnavailableError`` (lowering for cuda is unaffected)."""
    return _gpu_only_p.bind(x)
