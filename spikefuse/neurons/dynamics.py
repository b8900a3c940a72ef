"""One pure single-step function per neuron: the single source of truth of its dynamics.

Each step maps the membrane before step t and the input x_t to ``(s_t, v_t)`` — the spike
and the membrane after reset — following ``shared/spec/neurons.md``. The same function is
traced by the ``lax.scan`` reference (``reference.py``) and inside the Pallas scan kernels
(``kernels/scan.py``), whose backward differentiates it with ``jax.vjp`` in the kernel body.
So a step uses only elementwise jnp operations the Triton lowering accepts, and no division:
a decay is a multiplication by ``inv_tau = 1 / tau``, computed once outside the loop, because
XLA and Triton round a float division differently (Triton's f32 ``/`` is not IEEE-rounded)
and spikes must be bit-identical across backends. Multiplication, addition and comparison
round the same everywhere.

``fire(h, v_threshold)`` is passed in: the Heaviside spike H(h - v_threshold) with its
surrogate derivative (``spikefuse.fire`` in the reference, a kernel-local rule in the fused
backend). Everything is computed in the state's dtype (f32 for bf16/f16 inputs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["Step", "if_step", "lif_step", "if_spec", "lif_spec"]


def _reset(h, s, *, v_threshold, v_reset, detach_reset):
    if detach_reset:
        # The s that resets carries no gradient; the s that is output still does.
        s = jax.lax.stop_gradient(s)
    if v_reset is None:  # soft reset: subtract the threshold
        return h - v_threshold * s
    return h * (1.0 - s) + v_reset * s  # hard reset


def if_step(v, x, *, v_threshold, v_reset, detach_reset: bool, fire: Callable):
    """One integrate-and-fire step: h = v + x; s = H(h - v_th); reset.

    Args:
      v: membrane before the step.
      x: input current x_t, in v's dtype.
      v_threshold: firing threshold.
      v_reset: reset potential (hard reset), or None for a soft reset (v = h - v_th·s).
      detach_reset: the s used in the reset carries no gradient.
      fire: ``fire(h, v_threshold)`` -> H(h - v_threshold) with a surrogate derivative.

    Returns:
      ``(s, v_new)``, both of v's shape and dtype.
    """
    h = v + x
    s = fire(h, v_threshold)
    return s, _reset(h, s, v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset)


def lif_step(v, x, *, inv_tau, v_threshold, v_reset, decay_input: bool, detach_reset: bool,
             fire: Callable):
    """One leaky integrate-and-fire step; the charge decays towards v_reset (0 when soft).

    decay_input=True:  h = v + (x - (v - v_reset)) · inv_tau
    decay_input=False: h = v - (v - v_reset) · inv_tau + x

    Args are those of `if_step`, plus ``inv_tau`` (1/τ) and ``decay_input``.
    """
    rest = v if v_reset is None else v - v_reset
    if decay_input:
        h = v + (x - rest) * inv_tau
    else:
        h = v - rest * inv_tau + x
    s = fire(h, v_threshold)
    return s, _reset(h, s, v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset)


@dataclasses.dataclass(frozen=True)
class Step:
    """A step function bound to its static options, called as ``step(v, x, params, fire)``.

    ``params`` is the tuple of numeric parameters named by ``names`` (traced values: scalars,
    per-neuron arrays, or per-block rows inside a kernel). Frozen and compared by value, so
    it is hashable and can be a static argument of ``jit``, ``custom_vjp`` and kernels.
    """

    fn: Callable
    names: tuple[str, ...]
    static: tuple[tuple[str, Any], ...] = ()

    def __call__(self, v, x, params, fire):
        kwargs = dict(zip(self.names, params, strict=True))
        return self.fn(v, x, fire=fire, **kwargs, **dict(self.static))


def if_spec(*, soft_reset: bool, detach_reset: bool) -> Step:
    """The IF step; params are ``(v_threshold,)`` soft or ``(v_threshold, v_reset)`` hard."""
    if soft_reset:
        return Step(if_step, ("v_threshold",),
                    (("v_reset", None), ("detach_reset", bool(detach_reset))))
    return Step(if_step, ("v_threshold", "v_reset"), (("detach_reset", bool(detach_reset)),))


def lif_spec(*, soft_reset: bool, decay_input: bool, detach_reset: bool) -> Step:
    """The LIF step; params are ``(inv_tau, v_threshold[, v_reset])``."""
    static = (("decay_input", bool(decay_input)), ("detach_reset", bool(detach_reset)))
    if soft_reset:
        return Step(lif_step, ("inv_tau", "v_threshold"), (("v_reset", None),) + static)
    return Step(lif_step, ("inv_tau", "v_threshold", "v_reset"), static)
