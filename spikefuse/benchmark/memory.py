"""What a training step keeps in memory: residuals counted from ``jax.vjp``, compiled sizes.

The residual counter is the user's tool, ``spikefuse.memory.residuals`` /
``residual_bytes`` (re-exported here; ``vjp_residuals`` is ``residuals``): the arrays that
``jax.vjp(fn, *args)`` keeps for the backward pass — the leaves of the pullback it returns —
with their shapes, dtypes and which argument each is, if one. It traces abstractly
(``jax.eval_shape``): nothing is computed or allocated, so it works at any size on any
machine, for any backend that traces there (``"pallas"`` included, on a CPU).

Why it matters: BPTT through ``lax.scan`` keeps every step's residuals (for the reference
LIF, two f32 arrays per step: 8 B per neuron-step), while the fused neurons keep their
input x (which the backward re-reads) plus a membrane checkpoint every K steps (4/K B per
neuron-step). The benchmark tables and the tests read both numbers from here.

``compiled_memory(compiled)`` reads XLA's own account of a compiled function
(``memory_analysis()``: temporaries, arguments, outputs), and ``device_peak_bytes()`` the
device allocator's peak where the platform reports one (GPU).
"""

from __future__ import annotations

import jax

from spikefuse.memory import Residual, residual_bytes, residuals

__all__ = ["Residual", "compiled_memory", "device_peak_bytes", "residual_bytes",
           "vjp_residuals"]

vjp_residuals = residuals


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
