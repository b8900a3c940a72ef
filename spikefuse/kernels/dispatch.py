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
import os

import jax

__all__ = ["BACKENDS", "ENV_VAR", "get_backend", "resolve", "set_backend", "use_backend"]

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
