"""The ``lax.scan`` reference of a multi-step neuron: the specification of the fused kernels.

A ``lax.scan`` of the neuron's step (``dynamics.py``) over the leading time axis, with the
spike taken by ``spikefuse.fire(..., backend="reference")``, differentiated by JAX.

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

from collections.abc import Callable

import jax

__all__ = ["default_unroll", "multistep_reference"]

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


def multistep_reference(step: Callable, x_seq, v0, params: tuple, fire: Callable, *,
                        unroll: int | None = None, return_v_seq: bool = False):
    """Runs ``step`` over the leading axis of ``x_seq`` with ``lax.scan``.

    Args:
      step: ``step(v, x_t, params, fire) -> (s_t, v_t)`` (a ``dynamics.Step``).
      x_seq: ``[T, *shape]`` float inputs.
      v0: initial state of ``shape`` in the compute dtype (which the state keeps).
      params: the step's numeric parameters in the compute dtype, each broadcastable to
        ``shape``.
      fire: ``fire(h, v_threshold)``, the spike with its surrogate derivative.
      unroll: steps per scan iteration; ``default_unroll(T)`` when None.
      return_v_seq: also return the membrane after each step.

    Returns:
      ``(s_seq, v_T)`` or ``(s_seq, v_T, v_seq)``; all in ``x_seq``'s dtype.
    """
    dtype, cdt = x_seq.dtype, v0.dtype
    if unroll is None:
        unroll = default_unroll(x_seq.shape[0], N=x_seq[0].size)

    def body(v, x_t):
        s, v = step(v, x_t.astype(cdt), params, fire)
        out = (s.astype(dtype), v.astype(dtype)) if return_v_seq else s.astype(dtype)
        return v, out

    v_T, out = jax.lax.scan(body, v0, x_seq, unroll=unroll)
    if return_v_seq:
        return out[0], v_T.astype(dtype), out[1]
    return out, v_T.astype(dtype)
