"""What a training step keeps in memory: residuals counted from ``jax.vjp``, compiled sizes.

``vjp_residuals(fn, *args)`` lists the arrays that ``jax.vjp(fn, *args)`` keeps for the
backward pass — the leaves of the pullback it returns — with their shapes, dtypes and
whether each is one of the inputs themselves. It traces abstractly (``jax.eval_shape``):
nothing is computed or allocated, so it works at any size on any machine, for any backend
that traces there (``"pallas"`` included, on a CPU).

Why it matters: BPTT through ``lax.scan`` keeps every step's residuals (for the reference
LIF, two f32 arrays per step: 8 B per neuron-step), while the fused neurons keep their
input x (which the backward re-reads) plus a membrane checkpoint every K steps (4/K B per
neuron-step). The benchmark tables and the tests read both numbers from here.

``compiled_memory(compiled)`` reads XLA's own account of a compiled function
(``memory_analysis()``: temporaries, arguments, outputs), and ``device_peak_bytes()`` the
device allocator's peak where the platform reports one (GPU).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

__all__ = ["Residual", "compiled_memory", "device_peak_bytes", "residual_bytes",
           "vjp_residuals"]


@dataclasses.dataclass(frozen=True)
class Residual:
    """One array a pullback holds: its shape, dtype, size in bytes, and whether it is one of
    the differentiated function's inputs (kept as is, not a new array)."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    is_input: bool


def vjp_residuals(fn, *args) -> list[Residual]:
    """The arrays ``jax.vjp(fn, *args)`` keeps for the backward.

    Args:
      fn: the function to differentiate (any pytree of array inputs and outputs).
      *args: its arguments: arrays, or ``jax.ShapeDtypeStruct`` (nothing is computed).

    Returns:
      One ``Residual`` per distinct array held by the pullback. Constants the function
      closes over count too (they are held); an input converted or reshaped is a new array.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.ShapeDtypeStruct((1000,), jnp.float32)
      >>> [r.nbytes for r in vjp_residuals(jax.checkpoint(jnp.sin), x)]  # keeps x only
      [4000]
    """
    flags: list[bool] = []

    def probe(*args):
        _, pullback = jax.vjp(fn, *args)
        inputs = jax.tree_util.tree_leaves(args)
        held = jax.tree_util.tree_leaves(pullback)  # jax lists an array held twice once
        flags.extend(any(leaf is a for a in inputs) for leaf in held)
        return held

    shapes = jax.eval_shape(probe, *args)
    return [Residual(tuple(s.shape), np.dtype(s.dtype).name,
                     int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize, f)
            for s, f in zip(shapes, flags)]


def residual_bytes(fn, *args, exclude_inputs: bool = False, per: float = 1) -> float:
    """Bytes ``jax.vjp(fn, *args)`` keeps for the backward, divided by ``per``.

    Args:
      fn, *args: as in `vjp_residuals`.
      exclude_inputs: leave out the inputs themselves (they exist anyway; what remains is
        what differentiating adds).
      per: a divisor, e.g. the number of neuron-steps (T x neurons) for bytes per
        neuron-step.

    Returns:
      ``sum(nbytes) / per`` over the residuals counted.
    """
    total = sum(r.nbytes for r in vjp_residuals(fn, *args)
                if not (exclude_inputs and r.is_input))
    return total / per


def compiled_memory(compiled) -> dict:
    """XLA's memory account of a compiled function: ``temp``, ``argument``, ``output``,
    ``alias`` bytes and ``total`` = temp + argument + output − alias; empty where the
    platform gives none."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every platform or jax version implements it
        return {}
    if m is None:
        return {}
    out = dict(temp=int(m.temp_size_in_bytes), argument=int(m.argument_size_in_bytes),
               output=int(m.output_size_in_bytes), alias=int(m.alias_size_in_bytes))
    out["total"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    return out


def device_peak_bytes(device=None) -> int | None:
    """The allocator's peak bytes in use on ``device`` since the process started (GPU), or
    ``None`` where the platform does not report it (CPU)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:
        return None
    return None if not stats or "peak_bytes_in_use" not in stats else int(
        stats["peak_bytes_in_use"])
