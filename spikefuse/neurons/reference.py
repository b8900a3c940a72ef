"""The ``lax.scan`` reference of a multi-step neuron: the specification of the fused kernels.

A ``lax.scan`` over the leading time axis of the engine's flat step (a user's step or a
built-in one from ``dynamics.py``, with ``fire`` bound to the surrogate), differentiated by
JAX.

``unroll`` (steps per loop iteration) matters a lot and in opposite directions by platform:

* GPU: each iteration of a rolled scan launches its own fused kernels and round-trips the
  carry through memory, ~11–35 µs per step whatever the layer size. Unrolling U steps lets
  XLA fuse U steps into one kernel. Measured on an H200 (jax 0.11.2, LIF, forward+backward):
  T=1024 x 4096 goes from 14–26 ms (U=1) to 0.97–1.15 ms (U=32), T=32 x 4.19M from 2.84
  to 1.29 ms. So GPU (and TPU) default to U = min(T, 32) — except for long sequences of
  large layers, where U=32 spills: our H200 run of 2026-11-29 (bench/RESULTS.md) measured
  T=128 x 1M at 3.05 ms (U=8) vs 4.70 ms (U=32) while T=32 x 4M, 64 x 65536 and
  1024 x 4096 were fastest at U=32. So U = 8 when T > 32 and N >= 2^20.
* CPU (where ``"auto"`` picks the reference): U=1 is fastest; unrolling makes XLA's CPU
  fusions recompute work. Measured here (jax 0.10.2, 2 cores, LIF, jit(grad)):
  T=64 x 65536: 66 ms (U=1), 230 ms (U=8), 895 ms (U=32); T=1024 x 4096: 140 / 244 /
  944 ms; T=32 x 262144: 257 / 855 / 312 ms; compile time also grows with U (0.6 s -> 15 s).
  So CPU defaults to U = 1.
``bench/neurons.py`` re-measures U = 1, 8, 32 on the GPU in every run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["default_unroll", "run_reference"]

# Steps fused per scan iteration when the caller does not choose (see the module docstring).
_UNROLL_BY_PLATFORM = {"cpu": 1}
_UNROLL_ACCELERATOR = 32
_UNROLL_LONG_AND_LARGE = 8  # T > 32 and N >= _LARGE_N on an accelerator
_LARGE_N = 1 << 20


def default_unroll(T: int, platform: str | None = None, N: int = 0) -> int:
    """The ``lax.scan`` unroll used when none is given (``N``: neurons per step).

    1 on CPU; on accelerators ``min(T, 32)``, or 8 when ``T > 32`` and ``N >= 2**20``.
    ``platform`` defaults to ``jax.default_backend()`` at call time.
    """
    platform = jax.default_backend() if platform is None else platform
    unroll = _UNROLL_BY_PLATFORM.get(platform, _UNROLL_ACCELERATOR)
    if platform not in _UNROLL_BY_PLATFORM and T > 32 and N >= _LARGE_N:
        unroll = _UNROLL_LONG_AND_LARGE
    return max(1, min(int(T), unroll))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def run_reference(step: Callable, unroll: int, out_dtype, xs: tuple, init: tuple,
                  params: tuple):
    """Runs a flat step (``engine.FlatStep``) over the leading axis of ``xs`` with
    ``lax.scan``.

    Args:
      step: ``step(state, xs_t, params) -> (outs, new_state)`` on flat tuples.
      unroll: steps per scan iteration (`default_unroll` is the default of the callers).
      out_dtype: dtype of the per-step outputs and final states.
      xs: the inputs, each ``[T, *shape]``.
      init: the initial state leaves in the compute dtype (which the state keeps), each
        broadcastable to ``shape``.
      params: the step's parameters in the compute dtype, each broadcastable to ``shape``.

    Returns:
      ``(outs, finals)``: per-step outputs ``[T, *shape]`` and final states ``[*shape]``,
      in ``out_dtype``.
    """
    cdt = init[0].dtype
    # Shaped (and, on Explicit mesh axes, sharded) like one time step of x: the scan carry.
    zero = jnp.zeros_like(xs[0][0], dtype=cdt)
    init = tuple(v + zero for v in init)

    def body(state, x_t):
        outs, new = step(state, tuple(a.astype(cdt) for a in x_t), params)
        return tuple(new), tuple(o.astype(out_dtype) for o in outs)

    final, outs = jax.lax.scan(body, init, tuple(xs), unroll=unroll)
    return outs, tuple(v.astype(out_dtype) for v in final)
